"""OpenAI's Responses API (``/v1/responses``) over the chat path, with stored responses (gptoss.state)."""
