"""Drives the real `stripe` SDK through Postern, configured the way an app would be.

Environment: POSTERN_BASE_URL (the gateway) and POSTERN_CALLER_TOKEN (used as the SDK's
API key). argv[1] names the scenario. Prints one JSON object on stdout; any unexpected
error raises (non-zero exit).
"""

import json
import os
import sys

import stripe


def client() -> stripe.StripeClient:
    return stripe.StripeClient(
        os.environ["POSTERN_CALLER_TOKEN"],
        base_addresses={"api": f"{os.environ['POSTERN_BASE_URL']}/stripe"},
        max_network_retries=0,
    )


def create_customer() -> dict:
    customer = client().v1.customers.create(
        params={
            "email": "jenny.rosen@example.com",
            "name": "Jenny Rosen",
            "metadata": {"order_id": "6735"},
        }
    )
    return {
        "id": customer.id,
        "object": customer.object,
        "email": customer.email,
        "order_id": customer.metadata["order_id"],
    }


SCENARIOS = {"create_customer": create_customer}

if __name__ == "__main__":
    stripe.enable_telemetry = False
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
