#!/usr/bin/env python3
"""An independent XMPP client (slixmpp) for interoperability tests.

Two roles:

  send  log in, send one message to --to, wait for a message back from that bare JID,
        exit 0 only if it came (and, with --expect-body, carried that body).
  echo  log in, answer every chat/normal message with the same body, exit 0 after
        --count answers.

Once logged in (presence processed by the server) it prints SLIXMPP-READY on stdout.
It connects to --host/--port exactly (no SRV lookup), over STARTTLS or direct TLS
(XEP-0368), trusting only --ca when given. Every run is bounded by --timeout: a hang
exits 2, a login failure 3, a wrong reply 4.

Example:
  slixmpp_echo.py send --jid alice@example.test --password pw --host 127.0.0.1 \
      --port 5222 --tls starttls --ca ca.pem --to bob@example.test --body hello
"""

import argparse
import asyncio
import logging
import ssl
import sys

import slixmpp

EXIT_OK = 0
EXIT_TIMEOUT = 2
EXIT_AUTH = 3
EXIT_WRONG_REPLY = 4

# Printed on stdout once the session is established and presence is processed; a test
# waits for it before sending to an echo client.
READY_LINE = "SLIXMPP-READY"


class Client(slixmpp.ClientXMPP):
    def __init__(self, args):
        super().__init__(args.jid, args.password)
        self.args = args
        self.outcome = asyncio.get_event_loop().create_future()
        self.answered = 0
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("disconnected", self.on_disconnected)

    def finish(self, code, why):
        if not self.outcome.done():
            logging.info("finishing with %s: %s", code, why)
            self.outcome.set_result(code)

    async def on_session_start(self, _event):
        self.send_presence()
        # The server handles one session's stanzas in order: once the roster answer is
        # back, our presence has been processed and messages to our bare JID reach us.
        await self.get_roster()
        print(READY_LINE, flush=True)
        if self.args.role == "send":
            self.send_message(mto=self.args.to, mbody=self.args.body, mtype="chat")

    def on_message(self, msg):
        if msg["type"] not in ("chat", "normal"):
            return
        if self.args.role == "echo":
            msg.reply(msg["body"]).send()
            self.answered += 1
            if self.answered >= self.args.count:
                self.finish(EXIT_OK, "answered %d messages" % self.answered)
            return
        if msg["from"].bare != slixmpp.JID(self.args.to).bare:
            logging.info("ignoring a message from %s", msg["from"])
            return
        expected = self.args.expect_body
        if expected is not None and msg["body"] != expected:
            self.finish(EXIT_WRONG_REPLY, "reply body %r, expected %r" % (msg["body"], expected))
        else:
            self.finish(EXIT_OK, "got a reply from %s: %r" % (msg["from"], msg["body"]))

    def on_failed_auth(self, _event):
        self.finish(EXIT_AUTH, "authentication failed")

    def on_disconnected(self, reason):
        self.finish(EXIT_AUTH, "disconnected before finishing: %s" % (reason,))


def tls_context(ca):
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def run(args):
    client = Client(args)
    client.ssl_context = tls_context(args.ca)
    # Exactly one way in, so a test checks the transport it asked for, not a fallback.
    client.enable_direct_tls = args.tls == "direct"
    client.enable_starttls = args.tls == "starttls"
    client.enable_plaintext = False
    client.connect(args.host, args.port)
    try:
        code = await asyncio.wait_for(client.outcome, timeout=args.timeout)
    except asyncio.TimeoutError:
        logging.error("no outcome within %ss", args.timeout)
        code = EXIT_TIMEOUT
    client.disconnect()
    return code


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["send", "echo"])
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--tls", choices=["starttls", "direct"], default="starttls")
    parser.add_argument("--ca", help="PEM file of the CA to trust (default: system store)")
    parser.add_argument("--to", help="send: the JID to message and expect a reply from")
    parser.add_argument("--body", default="ping from slixmpp")
    parser.add_argument("--expect-body", help="send: the reply body required")
    parser.add_argument("--count", type=int, default=1, help="echo: answers before exiting")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    if args.role == "send" and not args.to:
        parser.error("send needs --to")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
