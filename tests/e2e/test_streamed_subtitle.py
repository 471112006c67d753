"""The subtitle an `interruption` reports for a streamed tts: its pieces joined with one space, a
piece that starts with punctuation attached to the word before, never a doubled space."""

from __future__ import annotations

from tests.conftest import connect

# Sentence pieces and a language model's deltas (leading spaces, punctuation of its own).
PIECES = ["One two three four", ",", " five six seven eight,", " nine ten eleven twelve", ".",
          "Thirteen fourteen fifteen sixteen."]


async def test_interrupted_stream_reports_its_pieces_joined_by_one_rule(gateway, http):
    client = await connect(http, gateway, id="subtitle")
    await client.send({"command": "invite", "option": {"codec": "pcm"}})
    await client.wait_event("answer")
    for i, piece in enumerate(PIECES):
        await client.send({"command": "tts", "text": piece, "playId": "s", "streaming": True,
                           "endOfStream": i == len(PIECES) - 1})
    starts = await client.wait_event("trackStart", count=2, timeout=10)
    assert starts[1]["playId"] == "s"
    # Half a second of the stream's audio has reached the client: it is speaking.
    mark = len(client.audio)
    await client.wait_audio(mark + 25, timeout=3)
    await client.send({"command": "interrupt"})
    ev, = await client.wait_event("interruption", timeout=3)
    assert ev["playId"] == "s"
    assert ev["subtitle"] == "One two three four, five six seven eight, nine ten eleven twelve. " \
                             "Thirteen fourteen fifteen sixteen."
    assert "  " not in ev["subtitle"]
    assert 0 <= ev["position"] < len(ev["subtitle"].split())
    await client.send({"command": "hangup"})
    await client.wait_closed()
