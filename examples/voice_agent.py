"""An offline voice agent: answers each of your turns with espeak-ng speech.

Run a server (``sfu serve``), open the demo page in a room, then::

    python examples/voice_agent.py --url http://127.0.0.1:8080 --room demo

The agent joins as "agent", listens to the first participant with a microphone (or
``--listen-to IDENTITY``), waits for you to stop talking, and says a sentence; speak
while it talks and it stops. There is no speech recognizer offline, so the
"transcript" is the length of your turn; swap in a real STT, reply generator or TTS by
implementing the protocols in :mod:`sfu.client.agent`. Its turn log goes to the data
channel (topic "agent"): the demo page shows nothing for it, ``window.sfu.dataMessages``
has it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from sfu.client import connect, dev_token
from sfu.client.agent import EspeakTts, Turn, VoiceAgent


class TurnLength:
    """Stands in for speech recognition: describes the turn instead of transcribing it."""

    async def transcribe(self, turn: Turn) -> str:
        return f"({turn.speech_seconds:.1f} seconds of speech)"


class ScriptedReply:
    """Answers every turn with a sentence long enough to be interrupted."""

    async def reply(self, transcript: str, turn: Turn) -> str:
        return (
            f"I heard you speak for {turn.speech_seconds:.1f} seconds. This is answer"
            f" number {turn.index}, spoken by an agent running on pysfu. I will keep"
            " talking for a while, so that you can interrupt me by speaking again."
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server")
    parser.add_argument("--room", default="demo")
    parser.add_argument("--identity", default="agent")
    parser.add_argument("--listen-to", help="identity of the participant to answer")
    parser.add_argument("--loopback-only", action="store_true", help="ICE on 127.0.0.1 only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)

    token = await dev_token(args.url, args.room, args.identity, name="Agent")
    async with await connect(
        args.url, token, name="Agent", loopback_only=args.loopback_only
    ) as room:
        agent = VoiceAgent(
            room, TurnLength(), ScriptedReply(), EspeakTts(), listen_to=args.listen_to
        )
        await agent.run()


if __name__ == "__main__":
    asyncio.run(main())
