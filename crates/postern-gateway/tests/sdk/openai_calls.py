"""Drives the real `openai` SDK through Postern, configured the way an app would be.

Environment: POSTERN_BASE_URL (the gateway, e.g. http://127.0.0.1:8080) and
POSTERN_CALLER_TOKEN (used as the SDK's API key). argv[1] names the scenario.
Prints one JSON object on stdout; any unexpected error raises (non-zero exit).
"""

import json
import os
import sys

import openai


def client() -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{os.environ['POSTERN_BASE_URL']}/openai/v1",
        api_key=os.environ["POSTERN_CALLER_TOKEN"],
        max_retries=0,
        timeout=20.0,
    )


def chat_and_models() -> dict:
    sdk = client()
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello to Postern."}],
    )
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello again, streamed."}],
        stream=True,
    )
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
    )
    models = sdk.models.list()
    return {
        "completion_id": completion.id,
        "completion": completion.choices[0].message.content,
        "total_tokens": completion.usage.total_tokens,
        "streamed": streamed,
        "models": [model.id for model in models],
    }


def ungranted_embeddings() -> dict:
    try:
        client().embeddings.create(model="text-embedding-3-small", input="hello")
    except openai.PermissionDeniedError as error:
        return {
            "error": type(error).__name__,
            "status": error.status_code,
            "code": error.code,
        }
    return {"error": None}


def via_https_proxy() -> dict:
    """The app is unchanged: default base URL (api.openai.com), HTTPS_PROXY from the
    environment, and only Postern's CA added to what it trusts. Its API key is a placeholder:
    the real key lives in Postern, which injects it."""
    sdk = openai.OpenAI(
        api_key="sk-placeholder-the-app-never-sees-the-real-key",
        http_client=openai.DefaultHttpxClient(verify=os.environ["POSTERN_CA_FILE"]),
        max_retries=0,
        timeout=20.0,
    )
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello through the proxy."}],
    )
    models = sdk.models.list()
    try:
        sdk.embeddings.create(model="text-embedding-3-small", input="hello")
        refused = None
    except openai.PermissionDeniedError as error:
        refused = {"status": error.status_code, "code": error.code}
    return {
        "completion": completion.choices[0].message.content,
        "models": [model.id for model in models],
        "embeddings": refused,
    }


def realtime() -> dict:
    """The Realtime API over WebSocket (the SDK's `websockets` client, `openai[realtime]`):
    the session Postern relays, with the caller token as the SDK's API key."""
    with client().realtime.connect(model="gpt-realtime") as connection:
        created = connection.recv()
        connection.session.update(
            session={"type": "realtime", "instructions": "Answer through Postern."}
        )
        updated = connection.recv()
    return {
        "created": created.type,
        "model": created.session.model,
        "updated": updated.type,
        "instructions": updated.session.instructions,
    }


SCENARIOS = {
    "realtime": realtime,
    "via_https_proxy": via_https_proxy,
    "chat_and_models": chat_and_models,
    "ungranted_embeddings": ungranted_embeddings,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
