"""Secure aggregation with homomorphic encryption: the FLARE server averages site updates it cannot read.

FLARE's HE provisioning (``nvflare.lighter.impl.he.HEBuilder``) gives every startup kit a TenSEAL CKKS context;
only the sites' contexts hold the secret key. Each site's update leaves its process through FLARE's
``HEModelEncryptor`` filter, already multiplied by the site's training sample count; the server
(:class:`radplan.federated.flare_server.RadplanFedAvg` with ``secure_aggregation``) adds the ciphertexts and
multiplies the sum by one over the total count: FedAvg's weighted average, computed on ciphertexts. The global model
goes back to the sites encrypted and FLARE's ``HEModelDecryptor`` filter decrypts it in the site's process. The
server writes the final model as ciphertexts; the hospital running the pipeline decrypts it with its site key
(:func:`decrypt_global_model`).

What the server can still check without the key is structure only: parameter names, the number of values in each
encrypted vector, the sample count. Whether an update diverges (its distance from the global model) cannot be seen
on ciphertexts, so the diverging-update screening of plain aggregation does not run; DP-SGD's clipping at the sites
is what bounds a site's influence then. Server momentum or a server learning rate are refused: the CKKS context
FLARE provisions (coefficient moduli 60/40/40 bits) allows one multiplication per round, which the average uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SERVER_CONTEXT_FILE = "server_context.tenseal"  # the names HEBuilder writes into the startup kits
CLIENT_CONTEXT_FILE = "client_context.tenseal"
ENCRYPTED_GLOBAL_MODEL_FILE = "global_model.encrypted.npz"


def unsupported_settings(server_momentum: float, server_learning_rate: float) -> str | None:
    """Why these job settings cannot run with secure aggregation, or None."""
    if server_momentum or server_learning_rate != 1.0:
        return ("server_momentum and server_learning_rate need further multiplications on ciphertexts than the provisioned "
                "CKKS context allows (one per round, used by the average): use plain FedAvg (0 and 1)")
    return None


def add_site_filters(job: Any, site: str) -> None:
    """FLARE's HE filters at ``site``: decrypt the global model it receives, encrypt (weighted by its sample count) what it sends."""
    from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
    from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
    from nvflare.job_config.defs import FilterType

    job.to(HEModelDecryptor(tenseal_context_file=CLIENT_CONTEXT_FILE), site, tasks=["train", "validate"], filter_type=FilterType.TASK_DATA)
    job.to(HEModelEncryptor(tenseal_context_file=CLIENT_CONTEXT_FILE, weigh_by_local_iter=True), site, tasks=["train"],
           filter_type=FilterType.TASK_RESULT)


def register_ciphertext_transport() -> None:
    """Let FLARE serialize CKKS vectors in this process (the HE filters do it at the sites; the server must too)."""
    from nvflare.app_opt.he import decomposers

    decomposers.register()


def encrypted_meta(encrypted: list[str], plain: list[str] = ()) -> dict[str, Any]:
    """The DXO meta that tells a site's HE decryptor which of the parameters it receives are encrypted."""
    from nvflare.apis.dxo import MetaKey
    from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS

    return {MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS,
            MetaKey.PROCESSED_KEYS: {**{name: True for name in encrypted}, **{name: False for name in plain}}}


def is_ciphertext(value: Any) -> bool:
    import tenseal as ts

    return isinstance(value, ts.CKKSVector)


def malformed_reason(sizes: dict[str, int], parameters: Any, n_samples: Any) -> str | None:
    """What the server can check of an encrypted update: every parameter present, encrypted, with the global model's number of values, and
    a positive sample count. None when it holds."""
    if not isinstance(parameters, dict):
        return f"parameters are a {type(parameters).__name__}, not a name -> ciphertext mapping"
    if set(parameters) != set(sizes):
        return f"parameter names {sorted(parameters)} differ from the global model's {sorted(sizes)}"
    for name, size in sizes.items():
        if not is_ciphertext(parameters[name]):
            return f"parameter {name!r} is not encrypted ({type(parameters[name]).__name__})"
        if parameters[name].size() != size:
            return f"parameter {name!r} has {parameters[name].size()} encrypted values, the global model {size}"
    if not isinstance(n_samples, (int, float)) or not math.isfinite(n_samples) or n_samples <= 0:
        return f"sample count {n_samples!r} is not a positive number"
    return None


def weighted_average(updates: list[tuple[dict[str, Any], float]]) -> dict[str, Any]:
    """FedAvg on ciphertexts: each site encrypted its parameters times its sample count n; the average is the sum
    times 1 / sum(n). ``updates``: (name -> ciphertext, n) per accepted site."""
    if not updates:
        raise ValueError("no accepted update to average")
    total = float(sum(n for _, n in updates))
    averaged = {}
    for name in updates[0][0]:
        summed = updates[0][0][name]
        for parameters, _ in updates[1:]:
            summed = summed + parameters[name]
        averaged[name] = summed * (1.0 / total)
    return averaged


def serialized(parameters: dict[str, Any]) -> dict[str, bytes]:
    """Ciphertexts as bytes, the form a site's HE decryptor reads (FLARE cannot copy a ciphertext under a key-less
    context for each site it broadcasts to)."""
    return {name: vector.serialize() for name, vector in parameters.items()}


def save_encrypted(path: Path, parameters: dict[str, Any]) -> None:
    """The ciphertexts as TenSEAL serializes them (no key inside), one byte array per parameter."""
    np.savez(path, **{name: np.frombuffer(data, dtype=np.uint8) for name, data in serialized(parameters).items()})


def decrypt_global_model(path: Path, context_file: Path, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The global model the server kept encrypted at ``path``, decrypted with a site's context (``context_file``,
    which holds the secret key) and given back its shapes."""
    import tenseal as ts

    context = ts.context_from(Path(context_file).read_bytes())
    if not context.is_private():
        raise ValueError(f"{context_file} holds no secret key (a server's context cannot decrypt the global model)")
    with np.load(path) as stored:
        if set(stored.files) != set(shapes):
            raise ValueError(f"{path} holds parameters {sorted(stored.files)}, the job's model {sorted(shapes)}")
        return {name: np.asarray(ts.ckks_vector_from(context, stored[name].tobytes()).decrypt(), np.float32).reshape(shapes[name])
                for name in stored.files}


def shaped_like(parameters: dict[str, Any], template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decrypted parameters come back as flat lists; give each the template's shape (names not in the template as they are)."""
    return {name: np.asarray(value, np.float32).reshape(np.shape(template[name])) if name in template else np.asarray(value, np.float32)
            for name, value in parameters.items()}
