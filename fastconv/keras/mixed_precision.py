"""`keras.mixed_precision`, as in Keras 3: the dtype policies under their legacy names.

    keras.mixed_precision.set_global_policy("mixed_bfloat16")

See fastconv.keras.dtype_policies for what each policy computes here.
"""
from fastconv.keras.dtype_policies import (  # noqa: F401
    DTypePolicy, Policy, dtype_policy, global_policy, set_dtype_policy, set_global_policy,
)

__all__ = ["DTypePolicy", "Policy", "dtype_policy", "global_policy", "set_dtype_policy", "set_global_policy"]
