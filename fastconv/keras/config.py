"""Global settings, as in Keras 3's `keras.config`."""

_unsafe_deserialization = False


def enable_unsafe_deserialization():
    """Let model files name layers that hold Python code (Lambda).

    Off by default, as in Keras: loading such a file would run whatever code it carries. Only turn it
    on for files you trust.
    """
    global _unsafe_deserialization
    _unsafe_deserialization = True


def unsafe_deserialization_enabled():
    """Whether enable_unsafe_deserialization() has been called."""
    return _unsafe_deserialization
