"""What a Letta request body may hold: an allow-list per body, field by field (SPEC §6).

A body passes through `Shape`s that return the value to forward. Fields that are not listed
are refused with a 400 naming them (a `null` is only "not set" and is dropped), so a field a
later Letta adds never reaches it unchecked. Fields that choose where Letta sends a model or
embedding call are rebuilt to point at the user's own agent route; fields that would make
Letta call a URL, run code or act for someone else are refused; ids are collected for the
guard to prove the user's own. The field lists cover Letta 0.11.7 and 0.16.8.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_gateway.errors import BadRequest, Forbidden

# Built-in Letta tools a user may attach by name: memory, conversation search, files. Tools
# that message other agents or reach the network are attachable only when LETTA_ALLOWED_TOOLS
# names them; so is any other tool of the organisation.
SAFE_TOOLS = frozenset(
    {
        "send_message",
        "conversation_search",
        "archival_memory_insert",
        "archival_memory_search",
        "core_memory_append",
        "core_memory_replace",
        "memory",
        "memory_apply_patch",
        "memory_insert",
        "memory_replace",
        "memory_rethink",
        "memory_finish_edits",
        "open_files",
        "grep_files",
        "semantic_search_files",
    }
)
AGENT_TYPES = frozenset(
    {"memgpt_agent", "memgpt_v2_agent", "letta_v1_agent", "react_agent", "workflow_agent", "split_thread_agent"}
)
MULTI_AGENT_TOOLS = frozenset(
    {"send_message_to_agent_and_wait_for_reply", "send_message_to_agents_matching_tags", "send_message_to_agent_async"}
)


@dataclass
class BodyContext:
    """Who sends the body, where their model calls must go, and what the guard must prove."""

    user_id: str
    endpoint: str  # PUBLIC_BASE_URL/api/v1/agents/<user>/messages
    allowed_tools: frozenset[str]
    proofs: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, id, field)


Shape = Callable[[Any, BodyContext, str], Any]


def keep(value: Any, ctx: BodyContext, where: str) -> Any:
    return value


def refuse(reason: str) -> Shape:
    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        raise BadRequest(f"`{where}` cannot be set through the gateway: {reason}.", param=where)

    return shape


def unproven(what: str) -> Shape:
    """Ids the gateway cannot prove the user's own (403)."""

    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        raise Forbidden(f"`{where}` cannot be set through the gateway: {what}.", param=where)

    return shape


def own(kind: str) -> Shape:
    """An id, or a list of ids, of objects the user must own (403 otherwise)."""

    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        ids = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in ids):
            raise BadRequest(f"`{where}` must hold ids.", param=where)
        ctx.proofs += [(kind, item, where) for item in ids]
        return value

    return shape


def each(item: Shape) -> Shape:
    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        if not isinstance(value, list):
            raise BadRequest(f"`{where}` must be a list.", param=where)
        return [item(entry, ctx, f"{where}[{index}]") for index, entry in enumerate(value)]

    return shape


def fields(spec: Mapping[str, Shape]) -> Shape:
    """An object whose keys are all in `spec`; each value shaped by its entry."""

    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        if not isinstance(value, dict):
            raise BadRequest(f"`{where or 'body'}` must be a JSON object.", param=where or None)
        shaped: dict[str, Any] = {}
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if item is None:
                continue
            rule = spec.get(key)
            if rule is None and key.endswith(("_id", "_ids")):
                raise Forbidden(f"`{path}` cannot be proven yours, so it cannot be set here.", param=path)
            if rule is None:
                raise BadRequest(f"`{path}` is not accepted through the gateway.", param=path)
            shaped[key] = rule(item, ctx, path)
        return shaped

    return shape


def one_of(tag: str, shapes: Mapping[str | None, Shape]) -> Shape:
    """An object shaped by the entry its `tag` field names (`None`: the tag is left out)."""

    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        kind = value.get(tag) if isinstance(value, dict) else None
        chosen = shapes.get(kind) if isinstance(kind, str | None) else None
        if chosen is None:
            raise BadRequest(f"`{where}.{tag}` {kind!r} is not accepted through the gateway.", param=where)
        return chosen(value, ctx, where)

    return shape


def text_or(parts: Shape) -> Shape:
    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        return value if isinstance(value, str) else parts(value, ctx, where)

    return shape


def choice(options: Collection[str]) -> Shape:
    def shape(value: Any, ctx: BodyContext, where: str) -> Any:
        if value not in options:
            raise BadRequest(f"`{where}` must be one of {', '.join(sorted(options))}.", param=where)
        return value

    return shape


# Model and embedding configs are rebuilt, never passed: the endpoint is always the user's own
# agent route as an OpenAI-compatible endpoint, and provider fields that could pick another
# key or provider are not kept.
_LLM_TUNING = (
    "model",
    "display_name",
    "context_window",
    "put_inner_thoughts_in_kwargs",
    "temperature",
    "max_tokens",
    "enable_reasoner",
    "reasoning_effort",
    "max_reasoning_tokens",
    "effort",
    "frequency_penalty",
    "verbosity",
    "parallel_tool_calls",
    "response_format",
    "strict",
    "return_logprobs",
    "top_logprobs",
    "return_token_ids",
)
_EMBEDDING_TUNING = ("embedding_model", "embedding_dim", "embedding_chunk_size", "batch_size")
DEFAULT_CONTEXT_WINDOW = 128000
DEFAULT_EMBEDDING_DIM = 1536
DEFAULT_CHUNK_SIZE = 300


def llm_config(value: Any, ctx: BodyContext, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("model"), str):
        raise BadRequest(f"`{where}` must be an object naming a `model`.", param=where)
    config = {key: value[key] for key in _LLM_TUNING if value.get(key) is not None}
    config.setdefault("context_window", DEFAULT_CONTEXT_WINDOW)
    return {**config, "model_endpoint_type": "openai", "model_endpoint": ctx.endpoint, "provider_category": "base"}


def embedding_config(value: Any, ctx: BodyContext, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("embedding_model"), str):
        raise BadRequest(f"`{where}` must be an object naming an `embedding_model`.", param=where)
    config = {key: value[key] for key in _EMBEDDING_TUNING if value.get(key) is not None}
    config.setdefault("embedding_dim", DEFAULT_EMBEDDING_DIM)
    config.setdefault("embedding_chunk_size", DEFAULT_CHUNK_SIZE)
    return {**config, "embedding_endpoint_type": "openai", "embedding_endpoint": ctx.endpoint}


def handle_name(value: Any, where: str) -> str:
    """`openai/gpt-4o-mini` → `gpt-4o-mini`: a handle names a model, the gateway picks the endpoint."""
    name = value.get("model") if isinstance(value, dict) else value
    if not isinstance(name, str) or not name:
        raise BadRequest(f"`{where}` must name a model.", param=where)
    return name.split("/", 1)[-1]


def tools(value: Any, ctx: BodyContext, where: str) -> Any:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise BadRequest(f"`{where}` must be a list of tool names.", param=where)
    refused = sorted(set(value) - ctx.allowed_tools)
    if refused:
        raise Forbidden(f"These tools cannot be attached through the gateway: {', '.join(refused)}.", param=where)
    return value


def multi_agent_tools(value: Any, ctx: BodyContext, where: str) -> Any:
    if value is True and not ctx.allowed_tools >= MULTI_AGENT_TOOLS:
        raise Forbidden("Multi-agent tools are not available through the gateway.", param=where)
    return value


# `model_settings` only tunes the model a config or handle already chose (Letta applies it as
# temperature, max tokens, reasoning effort…); its provider must be the OpenAI-compatible one.
MODEL_SETTINGS = fields(
    {
        "provider_type": choice({"openai"}),
        "max_output_tokens": keep,
        "parallel_tool_calls": keep,
        "temperature": keep,
        "reasoning": keep,
        "response_format": keep,
        "strict": keep,
        "verbosity": keep,
    }
)
# Compaction calls the agent's own model unless `model` names another handle: not allowed.
COMPACTION_SETTINGS = fields(
    {
        "model_settings": MODEL_SETTINGS,
        "prompt": keep,
        "prompt_acknowledgement": keep,
        "clip_chars": keep,
        "mode": keep,
        "sliding_window_percentage": keep,
    }
)

_TEMPLATES = unproven("templates and projects are not available")
BLOCK = fields(
    {
        "value": keep,
        "limit": keep,
        "label": keep,
        "name": keep,
        "description": keep,
        "read_only": keep,
        "metadata": keep,
        "hidden": keep,
        "tags": keep,
        "preserve_on_migration": keep,
        "is_template": _TEMPLATES,
        "template_name": _TEMPLATES,
        "template_id": _TEMPLATES,
        "base_template_id": _TEMPLATES,
        "project_id": _TEMPLATES,
        "deployment_id": _TEMPLATES,
        "entity_id": _TEMPLATES,
    }
)

# Message content: text and inline (base64) images. An image by URL would make Letta fetch it;
# an image by Letta file id would read a file that may be someone else's.
_CONTENT_PART = one_of(
    "type",
    {
        "text": fields({"type": keep, "text": keep, "signature": keep}),
        "image": fields(
            {
                "type": keep,
                "source": one_of(
                    "type", {"base64": fields({"type": keep, "media_type": keep, "data": keep, "detail": keep})}
                ),
            }
        ),
    },
)
CONTENT = text_or(each(_CONTENT_PART))
_GROUPS = unproven("groups are not available")
_MESSAGE = fields(
    {
        "type": keep,
        "role": choice({"user", "system", "assistant"}),
        "content": CONTENT,
        "name": keep,
        "otid": keep,
        "sender_id": unproven("the sender is the signed-in user"),
        "batch_item_id": unproven("batches are not available"),
        "group_id": _GROUPS,
    }
)
_APPROVAL = fields(
    {
        "type": keep,
        "otid": keep,
        "approvals": keep,
        "approve": keep,
        "approval_request_id": keep,
        "reason": keep,
        "group_id": _GROUPS,
    }
)
_TOOL_RETURN = fields({"type": keep, "otid": keep, "tool_returns": keep, "group_id": _GROUPS})
MESSAGES = each(
    one_of("type", {None: _MESSAGE, "message": _MESSAGE, "approval": _APPROVAL, "tool_return": _TOOL_RETURN})
)

_TURN = {
    "messages": MESSAGES,
    "input": CONTENT,
    "max_steps": keep,
    "use_assistant_message": keep,
    "assistant_message_tool_name": keep,
    "assistant_message_tool_kwarg": keep,
    "include_return_message_types": keep,
    "enable_thinking": keep,
    "client_tools": each(fields({"name": keep, "description": keep, "parameters": keep})),
    "client_skills": each(fields({"name": keep, "description": keep, "location": keep})),
    "override_model": refuse("the agent's own model is used, billed to you"),
    "include_compaction_messages": keep,
    "return_logprobs": keep,
    "top_logprobs": keep,
    "return_token_ids": keep,
    "override_system": keep,
    "callback_url": refuse("the Letta server would call that URL"),
}
_STREAMING = {"streaming": keep, "stream_tokens": keep, "include_pings": keep, "background": keep}
MESSAGE_SEND = fields({**_TURN, **_STREAMING})
MESSAGE_ASYNC = fields(_TURN)
MESSAGE_CANCEL = fields({"run_ids": own("run")})
MESSAGE_UPDATE = fields({"message_type": keep, "content": CONTENT, "reasoning": keep})
RESET_MESSAGES = fields({"add_default_initial_messages": keep})
PASSAGE = fields({"text": keep, "tags": keep, "created_at": keep, "metadata": keep})
RUN_STREAM = fields(
    {
        "agent_id": own("agent"),
        "run_id": own("run"),
        # Letta 0.16 finds a run by `otid` (in Redis) without asking whose it is: name it by `run_id`.
        "otid": refuse("name the run by its `run_id`"),
        "starting_after": keep,
        "include_pings": keep,
        "poll_interval": keep,
        "batch_size": keep,
    }
)


def _agent(creating: bool) -> Shape:
    spec: dict[str, Shape] = {
        "name": keep,
        "description": keep,
        "system": keep,
        "tags": keep,  # the owner tag is the guard's to write
        "metadata": keep,
        "tools": tools,
        "tool_rules": keep,
        "source_ids": own("source"),
        "folder_ids": own("folder"),
        "llm_config": llm_config,
        "embedding_config": embedding_config,
        "model": keep,  # a handle: turned into `llm_config` by the guard
        "embedding": keep,  # likewise into `embedding_config`
        "model_settings": MODEL_SETTINGS,
        "compaction_settings": COMPACTION_SETTINGS,
        "context_window_limit": keep,
        "embedding_chunk_size": keep,
        "max_tokens": keep,
        "reasoning": keep,
        "response_format": keep,
        "parallel_tool_calls": keep,
        "message_buffer_autoclear": keep,
        "enable_sleeptime": keep,
        "timezone": keep,
        "max_files_open": keep,
        "per_file_view_window_char_limit": keep,
        "hidden": keep,
        "tool_ids": unproven("attach built-in tools by name in `tools`"),
        "block_ids": unproven("shared blocks are not available; use `memory_blocks`"),
        "identity_ids": unproven("identities are not available"),
        "tool_exec_environment_variables": refuse("tool secrets are not available"),
        "secrets": refuse("tool secrets are not available"),
        "project_id": _TEMPLATES,
        "template_id": _TEMPLATES,
        "base_template_id": _TEMPLATES,
    }
    if creating:
        spec |= {
            "memory_blocks": each(BLOCK),
            # Voice agents make Letta build a sleep-time helper with a hard-coded OpenAI config (the
            # agent secret would go to api.openai.com); a bare sleep-time agent runs unseen.
            "agent_type": choice(AGENT_TYPES),
            "initial_message_sequence": MESSAGES,
            "include_base_tools": keep,
            "include_multi_agent_tools": multi_agent_tools,
            "include_base_tool_rules": keep,
            "include_default_source": keep,
            "max_reasoning_tokens": keep,
            "enable_reasoner": keep,
            "memory_variables": keep,
            "from_template": _TEMPLATES,
            "template": _TEMPLATES,
            "project": _TEMPLATES,
            "actor_id": refuse("agents are created as the gateway's Letta user"),
        }
    else:
        spec |= {
            "message_ids": unproven("the in-context messages are Letta's to manage"),
            "last_run_completion": keep,
            "last_run_duration_ms": keep,
            "last_stop_reason": keep,
        }
    return fields(spec)


COMPACTION = fields({"compaction_settings": COMPACTION_SETTINGS})
# A conversation runs its agent's own model; `model` would name another by handle.
_CONVERSATION_MODEL = refuse("a conversation runs its agent's own model, billed to you")
CONVERSATION_CREATE = fields(
    {"summary": keep, "isolated_block_labels": keep, "model": _CONVERSATION_MODEL, "model_settings": MODEL_SETTINGS}
)
CONVERSATION_UPDATE = fields(
    {"summary": keep, "last_message_at": keep, "model": _CONVERSATION_MODEL, "model_settings": MODEL_SETTINGS}
)
CONVERSATION_MESSAGE = fields({**_TURN, **_STREAMING, "agent_id": own("agent")})
ARCHIVE_CREATE = fields({"name": keep, "description": keep, "embedding": keep, "embedding_config": embedding_config})
ARCHIVE_UPDATE = fields({"name": keep, "description": keep})
PASSAGE_BATCH = fields({"passages": each(PASSAGE)})

AGENT_CREATE = _agent(creating=True)
AGENT_UPDATE = _agent(creating=False)
_SOURCE = {
    "name": keep,
    "description": keep,
    "instructions": keep,
    "metadata": keep,  # `owner` is the guard's to write
    "embedding_config": embedding_config,
}
SOURCE_CREATE = fields({**_SOURCE, "embedding": keep, "embedding_chunk_size": keep})
SOURCE_UPDATE = fields(_SOURCE)


def shape_body(shape: Shape, body: Any, ctx: BodyContext) -> dict[str, Any]:
    shaped = shape(body, ctx, "")
    assert isinstance(shaped, dict)
    return shaped
