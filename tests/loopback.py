"""The tests' servers on this machine's loopback, from ctxaware.loopback: `ChatServer`, an OpenAI-compatible
chat-completions endpoint whose answers the test writes (`chat_reply`: the body of a successful completion), and
`HubServer`, a stand-in of the Hugging Face hub."""

import json

from ctxaware.loopback import ChatServer, HubServer, git_blob_id  # noqa: F401 (the tests' import)


def chat_reply(content: str) -> str:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
