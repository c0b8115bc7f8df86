#!/usr/bin/env python3
"""An independent external component (slixmpp's ComponentXMPP, XEP-0114) for tests.

Connects to --host/--port as --jid with --secret. Every chat message it receives is
answered twice: first a headline "ad: BODY", then a chat message with the same body
(the echo). It prints COMPONENT-READY once the handshake succeeded, and exits 0 after
--count echoes; a run is bounded by --timeout (exit 2), a failed handshake exits 3.
"""

import argparse
import asyncio
import logging
import sys

from slixmpp.componentxmpp import ComponentXMPP

READY_LINE = "COMPONENT-READY"


class Component(ComponentXMPP):
    def __init__(self, args):
        super().__init__(args.jid, args.secret, args.host, args.port)
        self.args = args
        self.outcome = asyncio.get_event_loop().create_future()
        self.answered = 0
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)

    def finish(self, code, why):
        if not self.outcome.done():
            logging.info("finishing with %s: %s", code, why)
            self.outcome.set_result(code)

    async def on_session_start(self, _event):
        print(READY_LINE, flush=True)

    def on_message(self, msg):
        if msg["type"] not in ("chat", "normal"):
            return
        body = msg["body"]
        self.send_message(mto=msg["from"], mfrom=self.boundjid, mbody="ad: " + body, mtype="headline")
        self.send_message(mto=msg["from"], mfrom=self.boundjid, mbody=body, mtype="chat")
        self.answered += 1
        if self.answered >= self.args.count:
            self.finish(0, "answered %d messages" % self.answered)

    def on_disconnected(self, reason):
        self.finish(3, "disconnected: %s" % (reason,))


async def main(args):
    component = Component(args)
    component.connect()
    try:
        code = await asyncio.wait_for(component.outcome, args.timeout)
    except asyncio.TimeoutError:
        code = 2
    # Let the last answers leave before the stream closes.
    await asyncio.sleep(0.2)
    component.disconnect()
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    sys.exit(asyncio.run(main(args)))
