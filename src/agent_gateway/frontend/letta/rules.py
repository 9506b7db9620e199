"""The Letta routes a signed-in user may call, as one table (SPEC §6). Anything else is 403.

A rule names its methods and path; each `{name}` in the path is an id proven the user's own
by its name (`agent_id`: an agent, `folder_id`: a folder, `file_id`: a file of the agent or
folder before it…). It says which body shape the request must fit, what the gateway does
with the answer, whether the route is an agent turn (pre-flight checks, LLM_TIMEOUT), and
whether Letta serves it with a trailing slash. Routes present in only one Letta version
simply answer 404 on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agent_gateway.frontend.letta import bodies
from agent_gateway.frontend.letta.bodies import Shape


class Answer(Enum):
    """What the gateway does with Letta's answer."""

    RELAY = "relay"
    OWN_AGENTS = "own_agents"  # a list of agents: keep the user's own
    OWN_SOURCES = "own_sources"  # a list of folders/sources: keep the user's own
    OWN_OF_AGENTS = "own_of_agents"  # a list of runs, conversations, archives: keep those of the user's agents
    NEW_AGENT = "new_agent"
    NEW_SOURCE = "new_source"
    NEW_RUN = "new_run"  # an async message's run: remember it is this agent's
    NEW_PASSAGES = "new_passages"  # inserted into an agent's archival memory, or an archive
    NEW_ARCHIVE = "new_archive"
    MODELS = "models"  # answered by the gateway: the user's allowed models in Letta's shape
    EMBEDDING_MODELS = "embedding_models"
    COUNT_AGENTS = "count_agents"  # answered by the gateway: Letta would count everybody's
    COUNT_SOURCES = "count_sources"


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]
    path: tuple[str, ...]
    body: Shape | None = None
    answer: Answer = Answer.RELAY
    turn: bool = False  # runs the agent: pre-flight, LLM_TIMEOUT, the user's own breaker
    slash: bool = False  # Letta serves the collection at `path/`
    query_ids: tuple[str, ...] = ()  # query parameters naming ids, proven like path ids

    @property
    def local(self) -> bool:
        return self.answer in _LOCAL


_LOCAL = {Answer.MODELS, Answer.EMBEDDING_MODELS, Answer.COUNT_AGENTS, Answer.COUNT_SOURCES}


def rule(
    methods: str,
    path: str,
    body: Shape | None = None,
    answer: Answer = Answer.RELAY,
    *,
    turn: bool = False,
    slash: bool = False,
    query_ids: tuple[str, ...] = (),
) -> Rule:
    return Rule(frozenset(methods.split()), tuple(path.split("/")), body, answer, turn, slash, query_ids)


_AGENT = "agents/{agent_id}"
RULES: tuple[Rule, ...] = (
    rule("GET", "health", slash=True),
    rule("GET", "models", answer=Answer.MODELS),
    rule("GET", "models/embedding", answer=Answer.EMBEDDING_MODELS),
    # agents
    rule("GET", "agents", answer=Answer.OWN_AGENTS, slash=True),
    rule("POST", "agents", bodies.AGENT_CREATE, Answer.NEW_AGENT, slash=True),
    rule("GET", "agents/count", answer=Answer.COUNT_AGENTS),
    rule("GET DELETE", _AGENT),
    rule("PATCH", _AGENT, bodies.AGENT_UPDATE),
    rule("GET", f"{_AGENT}/context", query_ids=("conversation_id",)),
    # messages: the agent's turns
    rule("GET", f"{_AGENT}/messages", query_ids=("conversation_id",)),
    rule("POST", f"{_AGENT}/messages", bodies.MESSAGE_SEND, turn=True),
    rule("POST", f"{_AGENT}/messages/stream", bodies.MESSAGE_SEND, turn=True),
    rule("POST", f"{_AGENT}/messages/async", bodies.MESSAGE_ASYNC, Answer.NEW_RUN, turn=True),
    rule("POST", f"{_AGENT}/messages/cancel", bodies.MESSAGE_CANCEL),
    rule("PATCH", f"{_AGENT}/messages/{{message_id}}", bodies.MESSAGE_UPDATE),
    rule("PATCH", f"{_AGENT}/reset-messages", bodies.RESET_MESSAGES),
    # memory
    rule("GET", f"{_AGENT}/core-memory"),
    rule("GET", f"{_AGENT}/core-memory/blocks"),
    rule("GET", f"{_AGENT}/core-memory/blocks/{{block_label}}"),
    rule("PATCH", f"{_AGENT}/core-memory/blocks/{{block_label}}", bodies.BLOCK),
    rule("GET", f"{_AGENT}/archival-memory"),
    rule("POST", f"{_AGENT}/archival-memory", bodies.PASSAGE, Answer.NEW_PASSAGES),
    rule("GET", f"{_AGENT}/archival-memory/search"),
    rule("DELETE", f"{_AGENT}/archival-memory/{{memory_id}}"),
    # tools (read only), files, folders and sources of the agent
    rule("GET", f"{_AGENT}/tools"),
    rule("GET", f"{_AGENT}/files"),
    rule("PATCH", f"{_AGENT}/files/close-all"),
    rule("PATCH", f"{_AGENT}/files/{{file_id}}/open"),
    rule("PATCH", f"{_AGENT}/files/{{file_id}}/close"),
    rule("GET", f"{_AGENT}/folders"),
    rule("GET", f"{_AGENT}/sources"),
    rule("PATCH", f"{_AGENT}/folders/attach/{{folder_id}}"),
    rule("PATCH", f"{_AGENT}/folders/detach/{{folder_id}}"),
    rule("PATCH", f"{_AGENT}/sources/attach/{{source_id}}"),
    rule("PATCH", f"{_AGENT}/sources/detach/{{source_id}}"),
    # runs and steps of the user's agents
    rule("GET", "runs", answer=Answer.OWN_OF_AGENTS, slash=True, query_ids=("agent_id", "agent_ids")),
    rule("GET", "runs/{run_id}"),
    rule("GET", "runs/{run_id}/messages"),
    rule("GET", "runs/{run_id}/steps"),
    rule("GET", "runs/{run_id}/usage"),
    rule("POST", "runs/{run_id}/stream", bodies.RUN_STREAM),
    rule("GET", "steps/{step_id}"),
    rule("GET", "steps/{step_id}/messages"),
    # conversations (Letta 0.16): threads of one agent, each proven through its agent
    rule("GET", "conversations", answer=Answer.OWN_OF_AGENTS, slash=True, query_ids=("agent_id",)),
    rule("POST", "conversations", bodies.CONVERSATION_CREATE, slash=True, query_ids=("agent_id",)),
    rule("GET DELETE", "conversations/{conversation_id}"),
    rule("PATCH", "conversations/{conversation_id}", bodies.CONVERSATION_UPDATE),
    rule("GET", "conversations/{conversation_id}/messages", query_ids=("agent_id",)),
    rule("POST", "conversations/{conversation_id}/messages", bodies.CONVERSATION_MESSAGE, turn=True),
    rule("POST", "conversations/{conversation_id}/stream", bodies.RUN_STREAM),
    rule("POST", "conversations/{conversation_id}/cancel", query_ids=("agent_id",)),
    rule("POST", "conversations/{conversation_id}/compact", bodies.COMPACTION, turn=True),
    rule("POST", "conversations/{conversation_id}/fork", query_ids=("agent_id",)),
    # archives (Letta 0.16): archival memory shared by the user's own agents
    rule("GET", "archives", answer=Answer.OWN_OF_AGENTS, slash=True, query_ids=("agent_id",)),
    rule("POST", "archives", bodies.ARCHIVE_CREATE, Answer.NEW_ARCHIVE, slash=True),
    rule("GET DELETE", "archives/{archive_id}"),
    rule("PATCH", "archives/{archive_id}", bodies.ARCHIVE_UPDATE),
    rule("GET", "archives/{archive_id}/agents", answer=Answer.OWN_AGENTS),
    rule("POST", "archives/{archive_id}/passages", bodies.PASSAGE, Answer.NEW_PASSAGES),
    rule("POST", "archives/{archive_id}/passages/batch", bodies.PASSAGE_BATCH, Answer.NEW_PASSAGES),
    rule("DELETE", "archives/{archive_id}/passages/{passage_id}"),
    rule("PATCH", f"{_AGENT}/archives/attach/{{archive_id}}"),
    rule("PATCH", f"{_AGENT}/archives/detach/{{archive_id}}"),
)

for _kind in ("folders", "sources"):
    _ID = f"{_kind}/{{{_kind[:-1]}_id}}"
    RULES += (
        rule("GET", _kind, answer=Answer.OWN_SOURCES, slash=True),
        rule("POST", _kind, bodies.SOURCE_CREATE, Answer.NEW_SOURCE, slash=True),
        rule("GET", f"{_kind}/count", answer=Answer.COUNT_SOURCES),
        rule("GET DELETE", _ID),
        rule("PATCH", _ID, bodies.SOURCE_UPDATE),
        rule("GET", f"{_ID}/files"),
        rule("GET", f"{_ID}/files/{{file_id}}"),
        rule("POST", f"{_ID}/upload"),  # multipart, streamed through uninspected
        rule("DELETE", f"{_ID}/{{file_id}}"),
        rule("GET", f"{_ID}/passages"),
        rule("GET", f"{_ID}/agents", answer=Answer.OWN_AGENTS),
    )


def match(segments: list[str], method: str) -> tuple[Rule, dict[str, str]] | None:
    """The rule for this path and method, with the path's ids by name; None if not allowed."""
    for candidate in RULES:
        if len(candidate.path) != len(segments) or method not in candidate.methods:
            continue
        params: dict[str, str] = {}
        for part, segment in zip(candidate.path, segments, strict=True):
            if part.startswith("{"):
                params[part[1:-1]] = segment
            elif part != segment:
                break
        else:
            return candidate, params
    return None
