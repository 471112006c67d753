"""SIP dialogs (RFC 3261 §12–§15), sans-I/O.

A :class:`Dialog` holds the state of one peer-to-peer relationship: its id (Call-ID, local tag,
remote tag), local and remote URIs, CSeq counters, remote target and route set. It builds the
requests sent inside it (Request-URI and Route by §12.2.1.1 loose/strict routing) and the
responses of a UAS, and it checks the requests and responses that arrive inside it.

:class:`InviteDialogs` follows one outgoing INVITE: provisional responses with a To tag create
early dialogs, 2xx responses confirm them, and a 2xx from a second fork creates a second dialog
the caller must ACK and then end with BYE (§13.2.2.4).

:func:`build_cancel` makes the CANCEL of a pending INVITE (§9.1).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from protocol.errors import ProtocolError
from protocol.sip.message import Request, Response, make_request, make_response
from protocol.sip.uri import NameAddr, SipUri

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogConfirmed",
    "DialogId",
    "DialogState",
    "DialogTerminated",
    "EarlyDialog",
    "ForkedAnswer",
    "InviteDialogs",
    "InviteOutcome",
    "RetransmittedAnswer",
    "build_cancel",
    "dialog_id_of",
]

# Requests whose 2xx (sent or received) replaces the remote target (§12.2; RFC 3311, RFC 6665).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

# Requests that carry our Contact so the peer can refresh its remote target.
_CONTACT_METHODS = TARGET_REFRESH_METHODS

DEFAULT_MAX_FORWARDS = 70


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


def dialog_id_of(message: Request | Response, *, uac: bool | None = None) -> DialogId | None:
    """The id of the dialog ``message`` belongs to, seen from our side, or None without tags.

    A request we receive and a response we receive are read the same way as in §12.2.2/§12.1.2:
    for a received request the local tag is the To tag; for a received response (we sent the
    request) the local tag is the From tag. ``uac`` overrides the guess from the message type.
    """
    is_uac = isinstance(message, Response) if uac is None else uac
    from_tag = message.from_.tag
    to_tag = message.to.tag
    if from_tag is None or to_tag is None:
        return None
    if is_uac:
        return DialogId(message.call_id, from_tag, to_tag)
    return DialogId(message.call_id, to_tag, from_tag)


def _contact_uri(message: Request | Response) -> SipUri | None:
    for contact in message.contact:
        if contact.address is not None:
            return contact.address.uri
    return None


def _strip_for_request_uri(uri: SipUri) -> SipUri:
    """A Route URI used as Request-URI loses what a Request-URI may not carry (§12.2.1.1)."""
    if not uri.headers and not uri.has_param("method"):
        return uri
    params = tuple((n, v) for n, v in uri.params if n != "method")
    return dataclasses.replace(uri, params=params, headers=())


class Dialog:
    """One dialog. Build with :meth:`uac` (from a response to our request) or :meth:`uas`
    (from a request we answer)."""

    __slots__ = (
        "call_id",
        "local_uri",
        "remote_uri",
        "local_cseq",
        "remote_cseq",
        "remote_target",
        "route_set",
        "local_contact",
        "secure",
        "is_uac",
        "state",
        "_local_text",
        "_remote_text",
        "_acks",
    )

    def __init__(
        self,
        *,
        call_id: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        local_cseq: int | None,
        remote_cseq: int | None,
        remote_target: SipUri,
        route_set: tuple[NameAddr, ...],
        local_contact: NameAddr | None,
        secure: bool,
        is_uac: bool,
        state: DialogState,
        local_text: str | None = None,
        remote_text: str | None = None,
    ) -> None:
        if local_uri.tag is None or remote_uri.tag is None:
            raise ValueError("a dialog needs both tags")
        # From/To of in-dialog requests echo the texts first exchanged, byte for byte.
        self._local_text = local_text if local_text is not None else str(local_uri)
        self._remote_text = remote_text if remote_text is not None else str(remote_uri)
        self.call_id = call_id
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.local_cseq = local_cseq
        self.remote_cseq = remote_cseq
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_contact = local_contact
        self.secure = secure
        self.is_uac = is_uac
        self.state = state
        self._acks: dict[int, Request] = {}

    # -- creation ---------------------------------------------------------------------------------

    @classmethod
    def uac(
        cls, request: Request, response: Response, *, local_contact: NameAddr | None = None
    ) -> Dialog:
        """The dialog a 101-199 (early) or 2xx (confirmed) with a To tag creates (§12.1.2)."""
        if not 101 <= response.status < 300:
            raise ValueError(f"a {response.status} does not create a dialog")
        if response.to.tag is None:
            raise ProtocolError("dialog-creating response without To tag")
        if request.from_.tag is None:
            raise ValueError("request without From tag")
        target = _contact_uri(response) or request.uri
        return cls(
            call_id=request.call_id,
            local_uri=request.from_,
            remote_uri=response.to,
            local_cseq=request.cseq.number,
            remote_cseq=None,
            remote_target=target,
            route_set=tuple(reversed(response.record_route)),
            local_contact=local_contact if local_contact is not None else _first_contact(request),
            secure=request.uri.scheme == "sips",
            is_uac=True,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            local_text=request.get("From"),
            remote_text=response.get("To"),
        )

    @classmethod
    def uas(
        cls,
        request: Request,
        local_tag: str,
        *,
        local_contact: NameAddr | None = None,
        local_cseq: int | None = None,
        confirmed: bool = False,
    ) -> Dialog:
        """The dialog our 101-199 (early) or 2xx (``confirmed``) to ``request`` creates (§12.1.1).

        The local CSeq stays unset until our first request in the dialog (then 1, unless
        ``local_cseq`` gives a starting point)."""
        if request.from_.tag is None:
            raise ProtocolError("request without From tag cannot create a dialog")
        target = _contact_uri(request) or request.from_.uri
        to_text = request.get("To")
        local_text = None
        if to_text is not None and request.to.tag is None:
            local_text = f"{to_text};tag={local_tag}"
        return cls(
            call_id=request.call_id,
            local_uri=request.to.with_param("tag", local_tag),
            remote_uri=request.from_,
            local_cseq=local_cseq,
            remote_cseq=request.cseq.number,
            remote_target=target,
            route_set=tuple(request.record_route),
            local_contact=local_contact,
            secure=request.uri.scheme == "sips",
            is_uac=False,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            local_text=local_text,
            remote_text=request.get("From"),
        )

    # -- identity ---------------------------------------------------------------------------------

    @property
    def id(self) -> DialogId:
        assert self.local_uri.tag is not None and self.remote_uri.tag is not None
        return DialogId(self.call_id, self.local_uri.tag, self.remote_uri.tag)

    @property
    def local_tag(self) -> str:
        return self.id.local_tag

    @property
    def remote_tag(self) -> str:
        return self.id.remote_tag

    @property
    def terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    def __repr__(self) -> str:
        role = "UAC" if self.is_uac else "UAS"
        return f"Dialog({role} {self.id}, {self.state.value})"

    # -- requests we send -------------------------------------------------------------------------

    def _routing(self) -> tuple[SipUri, list[str]]:
        """Request-URI and Route values by §12.2.1.1."""
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        if first.uri.has_param("lr"):
            return self.remote_target, [str(route) for route in self.route_set]
        # Strict router: it gets the Request-URI; the remote target rides at the end of Route.
        routes = [str(route) for route in self.route_set[1:]]
        routes.append(f"<{self.remote_target}>")
        return _strip_for_request_uri(first.uri), routes

    def _build(
        self,
        method: str,
        cseq: int,
        via: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> Request:
        uri, routes = self._routing()
        all_headers: list[tuple[str, str]] = [
            ("Via", via),
            ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
        ]
        all_headers.extend(("Route", route) for route in routes)
        all_headers += [
            ("From", self._local_text),
            ("To", self._remote_text),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if method in _CONTACT_METHODS and self.local_contact is not None:
            all_headers.append(("Contact", str(self.local_contact)))
        all_headers.extend(headers)
        return make_request(method, uri, headers=all_headers, body=body)

    def create_request(
        self,
        method: str,
        *,
        via: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        """A new request inside the dialog (BYE, re-INVITE, UPDATE, REFER, NOTIFY, INFO, ...).

        ``via`` is the complete Via value, with a fresh branch. The local CSeq advances by one.
        Building a BYE ends the dialog (§15.1.1: the session is over once BYE is handed to the
        transaction). ACK and CANCEL are built by :meth:`create_ack` and :func:`build_cancel`.
        """
        method = method.upper()
        if method in ("ACK", "CANCEL"):
            raise ValueError(f"use {'create_ack' if method == 'ACK' else 'build_cancel'} for {method}")
        if self.terminated:
            raise ValueError("dialog is terminated")
        self.local_cseq = (self.local_cseq or 0) + 1
        request = self._build(method, self.local_cseq, via, headers, body)
        if method == "BYE":
            self.terminate()
        return request

    def create_ack(
        self,
        response: Response,
        *,
        via: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        """The ACK for a 2xx to our INVITE (§13.2.2.4): CSeq number of the INVITE, method ACK.

        The ACK built for a CSeq number is kept and returned again for a retransmitted 2xx, so
        a retransmission of the 2xx is answered by a retransmission of the same ACK (``via``,
        ``headers`` and ``body`` are then ignored)."""
        if not (200 <= response.status < 300 and response.cseq.method == "INVITE"):
            raise ValueError("ACK is built here only for a 2xx to INVITE")
        number = response.cseq.number
        ack = self._acks.get(number)
        if ack is None:
            ack = self._build("ACK", number, via, headers, body)
            self._acks[number] = ack
        return ack

    # -- responses we receive to our in-dialog requests -------------------------------------------

    def receive_response(self, request: Request, response: Response) -> None:
        """Apply a response to a request we sent in this dialog.

        481 and 408 end the dialog (§12.2.1.2); so does a non-2xx final to the INVITE of an early
        dialog. A 2xx to a target refresh request replaces the remote target.
        """
        status = response.status
        if status in (408, 481):
            self.terminate()
            return
        if status >= 300 and self.state is DialogState.EARLY and request.method == "INVITE":
            self.terminate()
            return
        if 200 <= status < 300 and request.method in TARGET_REFRESH_METHODS:
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target

    def request_timed_out(self) -> None:
        """The client transaction of an in-dialog request timed out: like a 408 (§12.2.1.2)."""
        self.terminate()

    # -- requests we receive ----------------------------------------------------------------------

    def receive_request(self, request: Request) -> int | None:
        """Check and apply a request received in this dialog (§12.2.2).

        Returns None when it is accepted, else the status to reject it with: 500 for a CSeq
        lower than the last one, 481 when the dialog is over. ACK and CANCEL reuse the CSeq of
        the request they belong to and do not move the remote CSeq. A BYE ends the dialog; a
        target refresh request replaces the remote target with its Contact.
        """
        method = request.method
        if self.terminated and method != "ACK":
            return 481
        if method not in ("ACK", "CANCEL"):
            number = request.cseq.number
            if self.remote_cseq is not None and number < self.remote_cseq:
                return 500
            self.remote_cseq = number
        if method in TARGET_REFRESH_METHODS:
            target = _contact_uri(request)
            if target is not None:
                self.remote_target = target
        if method == "BYE":
            self.terminate()
        return None

    # -- responses we send (UAS) ------------------------------------------------------------------

    def create_response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """A response to ``request`` carrying our tag (and our Contact where §12.1.1 wants it).

        For the INVITE that created an early dialog, a 2xx confirms it and a 300-699 ends it."""
        extra = list(headers)
        if (
            self.local_contact is not None
            and 101 <= status < 300
            and request.method in _CONTACT_METHODS
        ):
            extra.insert(0, ("Contact", str(self.local_contact)))
        response = make_response(
            request, status, reason, to_tag=self.local_tag, headers=extra, body=body
        )
        if request.method == "INVITE" and self.state is DialogState.EARLY:
            if 200 <= status < 300:
                self.state = DialogState.CONFIRMED
            elif status >= 300:
                self.terminate()
        return response


def _first_contact(message: Request | Response) -> NameAddr | None:
    for contact in message.contact:
        if contact.address is not None:
            return contact.address
    return None


# -- the dialogs of one outgoing INVITE -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EarlyDialog:
    """A provisional response with a To tag: ``created`` is False when it updated one we had."""

    dialog: Dialog
    created: bool


@dataclass(frozen=True, slots=True)
class DialogConfirmed:
    """The first 2xx: ACK it with ``dialog.create_ack(response, via=...)``."""

    dialog: Dialog
    response: Response


@dataclass(frozen=True, slots=True)
class RetransmittedAnswer:
    """A 2xx seen before for this dialog: send ``dialog.create_ack(response, ...)`` again (the
    same ACK is returned)."""

    dialog: Dialog
    response: Response


@dataclass(frozen=True, slots=True)
class ForkedAnswer:
    """A 2xx from another fork after one was accepted: a second dialog the UAC must ACK
    (``dialog.create_ack``) and then end (``dialog.create_request("BYE", ...)``), unless it
    chooses to keep both."""

    dialog: Dialog
    response: Response


@dataclass(frozen=True, slots=True)
class DialogTerminated:
    """A final non-2xx ended these early dialogs (possibly none)."""

    dialogs: tuple[Dialog, ...]
    response: Response


InviteOutcome: TypeAlias = (
    EarlyDialog | DialogConfirmed | RetransmittedAnswer | ForkedAnswer | DialogTerminated | None
)


class InviteDialogs:
    """The UAC's view of one INVITE it sent: the dialogs its responses create, by remote tag."""

    __slots__ = ("invite", "local_contact", "dialogs", "accepted")

    def __init__(self, invite: Request, *, local_contact: NameAddr | None = None) -> None:
        if invite.method != "INVITE":
            raise ValueError("InviteDialogs follows an INVITE")
        self.invite = invite
        self.local_contact = local_contact
        self.dialogs: dict[str, Dialog] = {}
        # The dialog of the first 2xx: the call. Later 2xx come from other forks.
        self.accepted: Dialog | None = None

    def receive_response(self, response: Response) -> InviteOutcome:
        """Apply a response to the INVITE; None when it concerns no dialog (100, tagless 1xx)."""
        if response.cseq.method != "INVITE" or response.cseq.number != self.invite.cseq.number:
            raise ValueError("response to another request")
        status = response.status
        tag = response.to.tag
        if status >= 300:
            ended = tuple(d for d in self.dialogs.values() if d.state is DialogState.EARLY)
            for dialog in ended:
                dialog.terminate()
            return DialogTerminated(ended, response)
        if tag is None or status == 100:
            return None
        dialog = self.dialogs.get(tag)
        if status < 200:
            if dialog is None:
                dialog = Dialog.uac(self.invite, response, local_contact=self.local_contact)
                self.dialogs[tag] = dialog
                return EarlyDialog(dialog, created=True)
            if dialog.state is DialogState.EARLY:
                target = _contact_uri(response)
                if target is not None:
                    dialog.remote_target = target
            return EarlyDialog(dialog, created=False)
        # 2xx
        if dialog is not None and dialog.state is DialogState.CONFIRMED:
            return RetransmittedAnswer(dialog, response)
        if dialog is None:
            dialog = Dialog.uac(self.invite, response, local_contact=self.local_contact)
            self.dialogs[tag] = dialog
        else:
            # §13.2.2.4: the early dialog is confirmed and its route set recomputed from the 2xx.
            dialog.state = DialogState.CONFIRMED
            dialog.route_set = tuple(reversed(response.record_route))
            target = _contact_uri(response)
            if target is not None:
                dialog.remote_target = target
        if self.accepted is None:
            self.accepted = dialog
            return DialogConfirmed(dialog, response)
        return ForkedAnswer(dialog, response)

    def timed_out(self) -> tuple[Dialog, ...]:
        """The INVITE transaction timed out: its early dialogs end (§12.3)."""
        ended = tuple(d for d in self.dialogs.values() if d.state is DialogState.EARLY)
        for dialog in ended:
            dialog.terminate()
        return ended


def build_cancel(invite: Request, *, headers: Iterable[tuple[str, str]] = ()) -> Request:
    """The CANCEL of a pending INVITE (§9.1): its Request-URI, Call-ID, From, To (without a tag
    it did not have), CSeq number, top Via (same branch) and Route headers."""
    if invite.method != "INVITE":
        raise ValueError("only an INVITE is cancelled")
    top_via = invite.get("Via")
    if top_via is None:
        raise ProtocolError("INVITE without Via")
    # Copied as sent: the CANCEL's To, From and Via must equal the INVITE's.
    all_headers: list[tuple[str, str]] = [
        ("Via", top_via),
        ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
    ]
    all_headers.extend(("Route", value) for value in invite.get_all("Route"))
    all_headers += [
        ("From", invite.get("From") or str(invite.from_)),
        ("To", invite.get("To") or str(invite.to)),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} CANCEL"),
    ]
    all_headers.extend(headers)
    return make_request("CANCEL", invite.uri, headers=all_headers)
