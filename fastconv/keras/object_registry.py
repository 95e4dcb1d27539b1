"""The classes a saved model may name besides the built-in layers: those the user registered with
`keras.saving.register_keras_serializable` or passes as `custom_objects=`.

Loading only ever instantiates a built-in class or one of these, which the user's own code defined;
a name found nowhere is an error that says how to register the class.
"""
import contextlib
import contextvars

_registered = {}  # "package>name" -> class
_scoped = contextvars.ContextVar("fastconv_custom_object_scope", default={})


def register_keras_serializable(package="Custom", name=None):
    """Class decorator: saved models refer to the class as "package>name" and load it back."""
    if not isinstance(package, str) or ">" in package:
        raise ValueError(f"package must be a string without '>', got {package!r}")

    def decorate(cls):
        registered_name = f"{package}>{name or cls.__name__}"
        if not hasattr(cls, "get_config"):
            raise ValueError(f"{cls.__name__} needs a get_config() method to be serializable")
        _registered[registered_name] = cls
        cls._registered_name = registered_name
        return cls
    return decorate


def get_registered_name(cls):
    """The name a saved model gives the class: "package>name" if registered, else its class name."""
    return cls.__dict__.get("_registered_name") or cls.__name__


def get_registered_object(name, custom_objects=None, module_objects=None):
    """The class saved under `name`: from custom_objects, an active custom_object_scope, the
    registry (by "package>name" or by bare class name), or module_objects; None when unknown."""
    for table in (custom_objects or {}, _scoped.get(), _registered, module_objects or {}):
        if name in table:
            return table[name]
    bare = name.split(">")[-1]
    for table in (custom_objects or {}, _scoped.get()):
        if bare in table:
            return table[bare]
    return None


def get_custom_objects():
    """The registry itself ("package>name" -> class), as Keras returns it."""
    return _registered


@contextlib.contextmanager
def custom_object_scope(*scopes):
    """Within this block, loading finds the classes of these {name: class} dicts."""
    merged = dict(_scoped.get())
    for scope in scopes:
        merged.update(scope or {})
    token = _scoped.set(merged)
    try:
        yield
    finally:
        _scoped.reset(token)


def resolver(builtin_classes, custom_objects=None):
    """A function name -> class for loading: built-ins first, then the user's classes."""
    def resolve(name):
        if name in builtin_classes:
            return builtin_classes[name]
        return get_registered_object(name, custom_objects)
    return resolve
