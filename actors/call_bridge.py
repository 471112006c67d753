"""Bridging two calls (media only): each caller hears the other through a tap on one track mixed
into the other track.

The call that receives `bridge` only looks its peer up and offers its track; the peer does the
wiring on both tracks and reports back. Calls never ask each other (only tracks, which ask
nobody), so two calls bridging each other at once cannot wait on each other.

Part of the Call actor: it runs in the Call's task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .call_context import CallContext
from .call_messages import BridgeFailed, BridgeGone, BridgeMade, BridgeOffer
from .call_supervisor import GetCall, NotYourCall
from .playout import PlaySpec
from .ref import ActorDeadError, ActorRef
from .track import Mix, Subscribe, Unsubscribe


@dataclass(frozen=True, slots=True)
class _Bridge:
    call: ActorRef
    track: ActorRef          # the peer's track
    in_peer: PlaySpec        # my caller, mixed into the peer's track
    in_mine: PlaySpec        # the peer's caller, mixed into my track


class Bridges:
    handles: ClassVar[tuple[type, ...]] = (BridgeOffer, BridgeMade, BridgeFailed, BridgeGone)

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self._bridges: dict[str, _Bridge] = {}

    async def receive(self, message: object) -> None:
        if isinstance(message, BridgeOffer):
            await self._offered(message)
        elif isinstance(message, BridgeMade):
            self._bridges[message.call_id] = _Bridge(message.call, message.track, in_peer=message.in_peer,
                                                     in_mine=message.in_mine)
        elif isinstance(message, BridgeFailed):
            self.call.refuse("bridge", f"bridge: call {message.call_id!r} cannot be bridged: {message.reason}",
                             409)
        elif isinstance(message, BridgeGone):
            self._bridges.pop(message.call_id, None)

    async def bridge(self, target: str) -> None:
        call = self.call
        track = call.need_track("bridge")
        if track is None:
            return
        if target == call.session_id or target in self._bridges:
            call.refuse("bridge", f"bridge: {target!r} is this call or already bridged to it", 400)
            return
        parent = call.actor_ref.parent
        try:
            peer = None if parent is None else await parent.ask(GetCall(target, for_call=call.session_id), timeout=1.0)
        except NotYourCall as exc:  # another API token's call: no eavesdropping by bridge
            call.refuse("bridge", f"bridge: {exc}", 403)
            return
        except (ActorDeadError, TimeoutError):
            # The call directory is stopping (a drain) or overloaded: this command fails, not the call.
            call.refuse("bridge", "bridge: the gateway's call directory is not answering; try again", 503)
            return
        if peer is None:
            call.refuse("bridge", f"bridge: no active call with id {target!r}", 404)
            return
        try:
            peer.tell(BridgeOffer(call.session_id, call.actor_ref, track))
        except ActorDeadError:
            call.refuse("bridge", f"bridge: call {target!r} has ended", 404)

    async def unbridge(self, target: str | None) -> None:
        call = self.call
        peers = list(self._bridges) if target is None else [target]
        for peer_id in peers:
            bridge = self._bridges.pop(peer_id, None)
            if bridge is None:
                call.refuse("unbridge", f"unbridge: not bridged to {peer_id!r}", 404)
                continue
            track = call.child("track")
            for owner, item, tap_owner, tap in ((bridge.track, bridge.in_peer, track, f"bridge:{peer_id}"),
                                                (track, bridge.in_mine, bridge.track, f"bridge:{call.session_id}")):
                try:
                    if owner is not None:
                        await owner.ask(Mix(item, None), timeout=1.0)
                    if tap_owner is not None:
                        await tap_owner.ask(Unsubscribe(tap, "in"), timeout=1.0)
                except (ActorDeadError, TimeoutError):
                    pass  # that call is ending; its track takes its taps and mixes with it
            try:
                bridge.call.tell(BridgeGone(call.session_id))
            except ActorDeadError:
                pass

    async def _offered(self, offer: BridgeOffer) -> None:
        call = self.call
        track = call.child("track")
        if track is None or not call.answered or offer.call_id in self._bridges:
            _tell(offer.call, BridgeFailed(call.session_id, "it is not answered or already bridged"))
            return
        try:
            theirs = await offer.track.ask(Subscribe(f"bridge:{call.session_id}", "in", capacity=10), timeout=1.0)
            mine = await track.ask(Subscribe(f"bridge:{offer.call_id}", "in", capacity=10), timeout=1.0)
        except (ActorDeadError, TimeoutError):
            return
        to_them = PlaySpec(0, f"bridge:{call.session_id}", "bridge")   # my caller, heard by theirs
        to_me = PlaySpec(0, f"bridge:{offer.call_id}", "bridge")       # their caller, heard by mine
        try:
            await offer.track.ask(Mix(to_them, mine), timeout=1.0)
        except (ActorDeadError, TimeoutError):
            return
        await call.ask_child("track", Mix(to_me, theirs))
        self._bridges[offer.call_id] = _Bridge(offer.call, offer.track, in_peer=to_them, in_mine=to_me)
        _tell(offer.call, BridgeMade(call.session_id, call.actor_ref, track, in_peer=to_me, in_mine=to_them))


def _tell(ref: ActorRef, message: object) -> None:
    # The other call may end at any moment; its end is not this call's failure.
    try:
        ref.tell(message)
    except ActorDeadError:
        pass
