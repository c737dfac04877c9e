"""Plain `requests` (the most common Python HTTP client) through Postern as HTTPS_PROXY.

Environment: HTTPS_PROXY (Postern, with the caller token as the proxy password) and
POSTERN_CA_FILE (Postern's interception CA). Prints one JSON object on stdout.
"""

import json
import os

import requests


def main() -> dict:
    session = requests.Session()
    session.verify = os.environ["POSTERN_CA_FILE"]
    models = session.get(
        "https://api.openai.com/v1/models",
        headers={"Authorization": "Bearer sk-placeholder"},
        timeout=20,
    )
    refused = session.post(
        "https://api.openai.com/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hello"},
        timeout=20,
    )
    return {
        "models_status": models.status_code,
        "models": [model["id"] for model in models.json()["data"]],
        "refused_status": refused.status_code,
        "refused_code": refused.json()["error"]["code"],
    }


if __name__ == "__main__":
    print(json.dumps(main()))
