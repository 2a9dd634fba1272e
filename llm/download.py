"""Fetch a local provider's weights from Hugging Face (into its cache) or ModelScope (into a folder)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from configs import ProviderConfig

SOURCES = ("huggingface", "modelscope")
CHECK_TIMEOUT = 5.0     # seconds for the first request: with no network, fail in seconds, not minutes
_REPO_ID = re.compile(r"^[\w-][\w.-]*(/[\w-][\w.-]*)?$")
# Other formats of the same weights; skipped when the repo has safetensors, so nothing downloads twice
_DUPLICATE_FORMATS = ["*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.ot", "*.gguf", "original/*"]


class DownloadError(Exception):
    """A download that cannot start or did not finish; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What to fetch, from where, to which folder (None: the Hugging Face cache)."""

    repo_id: str
    source: str
    local_dir: Path | None
    endpoint: str | None = None     # a Hugging Face endpoint other than HF_ENDPOINT's (a mirror)
    pattern: str | None = None      # a GGUF model: the repo's files to fetch (a name or glob), not all of it


def model_is_path(cfg: ProviderConfig) -> bool:
    """Whether `model:` names a folder: it exists, is no hub id, or `download:` holds the hub id."""
    return bool(cfg.download) or Path(cfg.model).expanduser().exists() or not _REPO_ID.match(cfg.model)


def nothing_to_download(cfg: ProviderConfig) -> str | None:
    """Why a provider needs no download (remote API, echo), or None for local models."""
    if cfg.kind in ("local", "gguf"):
        return None
    if cfg.kind == "echo":
        return f"{cfg.name} needs no download: it repeats the user's text and needs no model."
    need = f" It needs {' or '.join(cfg.api_key_env)} set in the environment." if cfg.api_key_env else ""
    where = cfg.base_url or f"the {cfg.kind} API"
    return f"{cfg.name} needs no download: it runs {cfg.model} on {where}.{need}"


def plan(cfg: ProviderConfig, source: str = "huggingface", directory: str | None = None,
         repo: str | None = None) -> Plan:
    """Decide repo and target folder: `download:` names the hub id when `model:` is a folder. A GGUF model
    (`repo:file-or-glob`, or a repo and its `quantization`) fetches only its file(s) into the HF cache."""
    if cfg.kind == "gguf" and not repo and not directory:
        from .providers.gguf_files import source as gguf_source

        where = gguf_source(cfg.download or cfg.model, cfg.quantization)
        if where.repo is None:
            raise DownloadError(f"{cfg.name} loads the file {where.path} and names no hub repo: set "
                                f"download: <repo>:<file> for provider {cfg.name} in configs.yaml, or put "
                                "the file there")
        if source == "modelscope":
            return Plan(where.repo, source, Path("models", where.repo), pattern=where.pattern)
        return Plan(where.repo, source, None, pattern=where.pattern)
    is_path = model_is_path(cfg)
    repo_id = repo or cfg.download or (None if is_path else cfg.model)
    if repo_id is None:
        raise DownloadError(f"{cfg.name} loads its model from the folder {cfg.model} and names no hub id: "
                            f"set download: <hub id> for provider {cfg.name} in configs.yaml, or pass --repo")
    if directory:
        local_dir = Path(directory)
    elif is_path:
        local_dir = Path(cfg.model).expanduser()
    else:   # the HF cache is where LocalProvider looks for hub ids; ModelScope has no such link
        local_dir = Path("models", repo_id) if source == "modelscope" else None
    return Plan(repo_id, source, local_dir)


MIRROR = "https://hf-mirror.com"     # a public mirror of the Hugging Face hub, reachable from China


def mirror() -> str:
    """The other hub the page offers when a download fails: $HF_MIRROR (a company's own), else MIRROR."""
    return (os.environ.get("HF_MIRROR") or MIRROR).rstrip("/")


def hub_location() -> tuple[str, str]:
    """(endpoint, cache dir) of the HF hub from the environment now: huggingface_hub reads it at import."""
    from huggingface_hub import constants

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    cache = (os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
             or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None))
    return endpoint, os.path.expandvars(os.path.expanduser(cache)) if cache else constants.HF_HUB_CACHE


def download(p: Plan) -> Path:
    """Fetch the files (tqdm progress bars on stderr); returns the folder they are in."""
    return _from_modelscope(p) if p.source == "modelscope" else _from_huggingface(p)


def _from_huggingface(p: Plan) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    endpoint, cache_dir = hub_location()
    endpoint = (p.endpoint or endpoint).rstrip("/")
    try:    # one quick request first: it checks the network and lists the files
        info = HfApi(endpoint=endpoint).model_info(p.repo_id, timeout=CHECK_TIMEOUT)
    except GatedRepoError as e:
        raise DownloadError(f"{p.repo_id} is gated: accept its licence on {endpoint}/{p.repo_id}, "
                            "then run `hf auth login` (or set HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise DownloadError(f"{p.repo_id} does not exist on {endpoint} (or is private: set HF_TOKEN)") from e
    except HfHubHTTPError as e:
        raise DownloadError(f"{endpoint} answered with an error for {p.repo_id}: {e}") from e
    except Exception as e:  # noqa: BLE001 - connection errors differ between huggingface_hub versions
        raise DownloadError(_unreachable(endpoint, e)) from e
    files = [s.rfilename for s in info.siblings or []]
    ignore = _DUPLICATE_FORMATS if any(f.endswith(".safetensors") for f in files) else None
    allow = None
    if p.pattern is not None:     # a GGUF repo holds a file per quantization: only the one asked for
        from .providers.gguf_files import matching

        allow = matching(files, p.pattern)
        if not allow:
            ggufs = ", ".join(f for f in files if f.lower().endswith(".gguf")) or "none"
            raise DownloadError(f"{p.repo_id} on {endpoint} has no file matching {p.pattern!r} (its .gguf "
                                f"files: {ggufs}): set quantization or model: <repo>:<file> in configs.yaml")
        ignore = None
    try:
        path = snapshot_download(p.repo_id, local_dir=p.local_dir, ignore_patterns=ignore, endpoint=endpoint,
                                 allow_patterns=allow,
                                 cache_dir=cache_dir if p.local_dir is None else None,
                                 etag_timeout=min(constants.HF_HUB_ETAG_TIMEOUT, 30))
    except HfHubHTTPError as e:
        raise DownloadError(f"downloading {p.repo_id} from {endpoint} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - network errors differ between versions; the message names the fix
        raise DownloadError(f"downloading {p.repo_id} from {endpoint} failed: {type(e).__name__}: {e}. "
                            "Run the same command again to resume.") from e
    return Path(path)


def _from_modelscope(p: Plan) -> Path:
    import urllib.error
    import urllib.request

    try:
        from modelscope import snapshot_download
    except ImportError as e:
        raise DownloadError("--source modelscope needs the modelscope package: pip install modelscope") from e
    url = "https://www.modelscope.cn"
    try:    # fail in seconds when it cannot be reached (honours HTTPS_PROXY like the download will)
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=CHECK_TIMEOUT).close()
    except urllib.error.HTTPError:
        pass    # it answered: reachable
    except (OSError, ValueError) as e:
        raise DownloadError(_unreachable(url, e)) from e
    try:
        return Path(snapshot_download(p.repo_id, local_dir=str(p.local_dir)))
    except Exception as e:  # noqa: BLE001 - modelscope raises many types; the message names the fix
        raise DownloadError(f"downloading {p.repo_id} from ModelScope failed: {type(e).__name__}: {e}") from e


def _unreachable(endpoint: str, e: BaseException) -> str:
    hint = ("set HF_ENDPOINT=https://hf-mirror.com, or use --source modelscope"
            if "modelscope" not in endpoint else "check the network or proxy settings")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    via = f" via proxy {proxy}" if proxy else ""
    return f"cannot reach {endpoint}{via} ({type(e).__name__}: {e}). Check the network, or {hint}."
