"""Drives the real `twilio` SDK through Postern, configured the way an app would be.

Environment: POSTERN_BASE_URL (the gateway), POSTERN_CALLER_TOKEN (used as the auth token,
the password of HTTP Basic) and TWILIO_ACCOUNT_SID. argv[1] names the scenario. Prints one
JSON object on stdout; any unexpected error raises (non-zero exit).
"""

import json
import os
import sys

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client


def client() -> Client:
    sdk = Client(
        os.environ["TWILIO_ACCOUNT_SID"],
        os.environ["POSTERN_CALLER_TOKEN"],
        http_client=TwilioHttpClient(timeout=20.0, max_retries=0),
    )
    # The only change an app makes: the REST API's base URL points at Postern.
    sdk.api.base_url = f"{os.environ['POSTERN_BASE_URL']}/twilio"
    return sdk


def send_message() -> dict:
    message = client().messages.create(
        to="+15558675310",
        from_="+15017122661",
        body="Your order has shipped.",
    )
    return {
        "sid": message.sid,
        "status": message.status,
        "to": message.to,
        "body": message.body,
    }


SCENARIOS = {"send_message": send_message}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
