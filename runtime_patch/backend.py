"""The sampler backend's name, and whether this server samples with it: a leaf module, so the plugin
and the hooks that check the resolved backend (dp_routing, grouping, serving) import it without
importing each other."""

BACKEND = "esamp"
BACKEND_FLAG = f"--sampling-backend {BACKEND}"


def server_explores() -> bool:
    """Whether this server samples with the esamp backend (read from SGLang's resolved config,
    published in the tokenizer process too)."""
    from sglang.srt.runtime_context import get_exec

    return get_exec().kernel.sampling_backend == BACKEND
