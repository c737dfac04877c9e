"""Drives the real `sentry-sdk` through Postern, configured the way an app would be.

With the `brotli` package installed, the SDK compresses every envelope it sends with `br`.
The app changes only its DSN (host and path prefix at Postern) and presents a client
certificate: Postern knows the caller by it (mTLS), and injects the project's real
`X-Sentry-Auth` in place of the DSN's placeholder key.

Environment: POSTERN_SENTRY_DSN, POSTERN_CA_FILE (the listener's CA), POSTERN_CLIENT_CERT
and POSTERN_CLIENT_KEY. argv[1] names the scenario. Prints one JSON object on stdout; any
unexpected error raises (non-zero exit).
"""

import json
import os
import sys

import sentry_sdk


def capture_messages() -> dict:
    sentry_sdk.init(
        dsn=os.environ["POSTERN_SENTRY_DSN"],
        ca_certs=os.environ["POSTERN_CA_FILE"],
        cert_file=os.environ["POSTERN_CLIENT_CERT"],
        key_file=os.environ["POSTERN_CLIENT_KEY"],
        default_integrations=False,
        auto_enabling_integrations=False,
        send_client_reports=False,
        auto_session_tracking=False,
    )
    # Sent in order by the SDK's one background worker.
    sentry_sdk.capture_message("checkout finished for ada@example.com")
    sentry_sdk.capture_message("charge failed for card 4242 4242 4242 4242")
    sentry_sdk.flush(timeout=20)
    transport = sentry_sdk.get_client().transport
    return {"compression": getattr(transport, "_compression_algo", None)}


SCENARIOS = {"capture_messages": capture_messages}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
