"""End to end: real Responses API clients, the OpenAI Agents SDK and Codex CLI, on the real ``bentoml serve``.

The tiny model's weights are random, so its free text never ends before the output limit, and
both clients treat a turn that ends there (``incomplete``) as an error. The turns here therefore
end where a grammar bounds them: a function call whose strict arguments are an enum, and a final
answer whose JSON schema is an enum (the Agents SDK's ``output_type``, Codex's
``--output-schema``).

Codex CLI comes from npm (pinned below) into ``.cache/npm``; the test installs it when it is
missing and skips, saying so, only where npm is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from tests.conftest import ADMIN_KEY, REPO, RemoteServer

# The end-to-end API suite: it runs on every engine selected with --engines.
pytestmark = pytest.mark.engines

MODEL = "gpt-oss-20b"
CODEX_VERSION = "0.171.0"
CODEX_PREFIX = REPO / ".cache" / "npm"


# --- OpenAI Agents SDK ------------------------------------------------------------------------


class Sunny(BaseModel):
    """The agent's final answer: a JSON object with one enum field (a finite language)."""

    sunny: Literal["yes", "no"]


def _weather_agent(server: RemoteServer, calls: list[str]):
    from agents import Agent, ModelSettings, OpenAIResponsesModel, function_tool

    @function_tool
    def get_weather(city: Literal["Paris", "Oslo"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    return Agent(
        name="weather",
        instructions="Answer whether it is sunny, using the tool.",
        tools=[get_weather],
        output_type=Sunny,
        model=OpenAIResponsesModel(model=MODEL, openai_client=server.async_client()),
        # The first turn must call the tool; RunHooks below turn tool_choice to "none" after it.
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=64),
        reset_tool_choice=False,
    )


def _answer_after_tool_hooks():
    from agents import RunHooks

    class AnswerAfterTool(RunHooks):
        async def on_tool_end(self, context, agent, tool, result) -> None:
            agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")

    return AnswerAfterTool()


@pytest.fixture(autouse=True, scope="module")
def _no_tracing() -> None:
    from agents import set_tracing_disabled

    set_tracing_disabled(True)  # tracing would export to api.openai.com


def _check_tool_then_answer(result: Any, calls: list[str]) -> None:
    from agents.items import MessageOutputItem, ReasoningItem, ToolCallItem, ToolCallOutputItem

    # Turn 1: one call of the forced tool, run by the SDK; turn 2: the answer, parsed into Sunny.
    # Either turn may start with reasoning (a reasoning item), as the random model pleases.
    assert len(calls) == 1 and calls[0] in ("Paris", "Oslo")
    kinds = [type(item) for item in result.new_items if not isinstance(item, ReasoningItem)]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem], kinds
    assert result.new_items[0].raw_item.name == "get_weather"
    assert isinstance(result.final_output, Sunny)
    assert len(result.raw_responses) == 2
    assert all(r.usage.output_tokens > 0 for r in result.raw_responses)


def test_agents_sdk_tool_then_answer(server: RemoteServer):
    from agents import Runner

    calls: list[str] = []
    agent = _weather_agent(server, calls)
    result = asyncio.run(Runner.run(agent, "Is it sunny in Paris?", max_turns=3, hooks=_answer_after_tool_hooks()))
    _check_tool_then_answer(result, calls)


def test_agents_sdk_streamed_tool_then_answer(server: RemoteServer):
    from agents import Runner

    calls: list[str] = []
    agent = _weather_agent(server, calls)

    async def run():
        streamed = Runner.run_streamed(agent, "Is it sunny in Paris?", max_turns=3, hooks=_answer_after_tool_hooks())
        raw = [e.data.type async for e in streamed.stream_events() if e.type == "raw_response_event"]
        return streamed, raw

    result, raw = asyncio.run(run())
    _check_tool_then_answer(result, calls)
    assert raw.count("response.created") == 2 and raw.count("response.completed") == 2
    assert "response.function_call_arguments.delta" in raw and "response.output_text.delta" in raw


# --- Codex CLI ----------------------------------------------------------------------------------


def _codex_bin() -> Path:
    """Codex CLI, pinned, from npm into .cache/npm (gitignored)."""
    codex = CODEX_PREFIX / "node_modules" / ".bin" / "codex"
    version = subprocess.run([codex, "--version"], capture_output=True, text=True) if codex.exists() else None
    if version is not None and version.stdout.strip() == f"codex-cli {CODEX_VERSION}":
        return codex
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: Codex CLI (npm @openai/codex) cannot be installed for this test")
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CODEX_PREFIX), f"@openai/codex@{CODEX_VERSION}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return codex


# Codex's own tools are function tools (web search and sub-agents, which are not, are off). With the
# shell and image tools off it still offers request_user_input, whose arguments are free JSON.
CODEX_CONFIG = """\
model = "{model}"
model_provider = "gptoss"
web_search = "disabled"

[model_providers.gptoss]
name = "gpt-oss on BentoML"
base_url = "{base_url}"
env_key = "GPTOSS_API_KEY"
wire_api = "responses"

[agents]
enabled = false

[features]
goals = false
shell_tool = false
view_image = false
"""
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
# What Codex prints when a turn ends at the output limit, the only way a turn may fail here.
OUTPUT_LIMIT = "ERROR: Incomplete response returned, reason: max_output_tokens"
# How Codex's log line starts when it refuses one of the model's tool calls.
REFUSED_TOOL_CALL = "ERROR codex_core::tools::router: error="
ATTEMPTS = 12


@pytest.fixture(scope="module")
def short_server(engine: str, keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    """A server whose default output limit is short: Codex sends no max_output_tokens."""
    log = tmp_path_factory.mktemp(f"codex-server-{engine}") / "server.log"
    env = {"GPTOSS_KEYS_FILE": str(keys_file), "GPTOSS_DEFAULT_MAX_TOKENS": "256"}
    srv = RemoteServer(env, log_path=log, engine=engine)
    yield srv
    srv.stop()


def test_codex_exec_one_turn(short_server: RemoteServer, tmp_path: Path):
    """``codex exec`` completes a turn against our /v1/responses and prints the schema's answer.

    The random model picks between answering and calling request_user_input (whose free JSON
    arguments run to the output limit) at random, so the turn is tried until it answers; an
    attempt may fail only at the output limit, any other error fails the test.
    """
    codex = _codex_bin()
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(CODEX_CONFIG.format(model=MODEL, base_url=short_server.url("/v1")))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(ANSWER_SCHEMA))
    env = {**os.environ, "CODEX_HOME": str(home), "GPTOSS_API_KEY": ADMIN_KEY, "NO_COLOR": "1"}
    cmd = [
        str(codex), "exec", "--skip-git-repo-check", "--ephemeral", "--color", "never",
        "--dangerously-bypass-approvals-and-sandbox", "--output-schema", str(schema), "-C", str(work),
        "Is it sunny? Answer yes or no.",
    ]  # fmt: skip
    for _ in range(ATTEMPTS):
        run = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        # A tool call Codex refuses (request_user_input is a Plan-mode tool; arguments that do not
        # parse) goes back to the model as the call's output, and Codex logs it; the turn goes on.
        errors = [line for line in run.stderr.splitlines() if "ERROR" in line and REFUSED_TOOL_CALL not in line]
        if run.returncode == 0:
            assert errors == [], run.stderr
            assert json.loads(run.stdout.strip().splitlines()[-1]) in ({"answer": "yes"}, {"answer": "no"})
            return
        # The model called request_user_input with arguments that ran to the output limit.
        assert errors and set(errors) == {OUTPUT_LIMIT}, run.stderr[-3000:]  # Codex may print it twice
    pytest.fail(f"codex exec did not complete a turn in {ATTEMPTS} attempts: {run.stderr[-3000:]}")
