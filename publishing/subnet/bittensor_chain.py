"""The bittensor SDK (v11) behind the `Chain` interface: finney, test, a local node, or any ws(s):// endpoint.

What the miner does on the chain is small: read the block height, check that its hotkey is registered on
the subnet, read a hotkey's commitment, and write its own. The decisions (network names, the commitment's
`Raw<N>` structure, decoding the records the SDK returns, turning chain failures into one line a miner
can act on) are pure functions here, testable without a node; `BittensorChain` only wires them to the SDK.

SDK calls used (checked against the installed bittensor 11.3 source):
  - `bittensor.settings.NETWORKS`            the SDK's own network-name -> endpoint map
  - `bittensor.Wallet`                       the SDK's native keyfile wallet (it has no bittensor_wallet dependency)
  - `bittensor.calls.Commitments.set_commitment(netuid=..., info=...)`   the raw call builder
  - `bittensor.Client(...).submit_call(call, signer, signer="hotkey")`   sign and submit
  - `bittensor.Client(...).read("commitment", netuid=..., hotkey_ss58=...)`
  - `bittensor.Client(...).read("uid", hotkey_ss58=..., netuid=...)`    registration on the subnet
  - `bittensor.Client(...).block()`
and one private part, through trainables.compat.bittensor_internals: the SDK's generated error catalog.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import bittensor
from bittensor import settings as bt_settings
from bittensor.keyfiles import KeyfileError, WrongPasswordError, resolve_key_password
from bittensor.result import ChainError as SdkChainError
from bittensor.result import RpcConnectionError, RpcPolicyError
from bittensor.wallet import DEFAULT_WALLET_PATH

from publishing.subnet.chain import ChainError, Commitment, Neuron
from publishing.subnet.constants import MAX_COMMITMENT_BYTES
from trainables.compat.bittensor_internals import error_catalog

log = logging.getLogger(__name__)

NETWORK_NAMES = ("finney", "test", "local")
# Raw0..Raw128: the Commitments pallet's Data enum holds at most 128 bytes in one Raw field.
NETWORK_FLAG = "--subtensor.network"

# Bounds on every network call, so a dead or silent endpoint becomes a ChainError, not a hang. The SDK's
# own transport waits 10 s for a handshake but 60 s per silent response, five times over, before giving up.
DEFAULT_TIMEOUT_S = 30.0
# Submitting waits for the block to be finalized: on finney a few 12-second blocks.
DEFAULT_SUBMIT_TIMEOUT_S = 120.0

# Every error name the SDK's generated catalog knows, to find a name inside a plain message (its one private part:
# trainables.compat.bittensor_internals).
_ERROR_CATALOG = error_catalog()
_KNOWN_ERROR_NAMES = set(_ERROR_CATALOG)
_ERROR_DOCS = {name: docs for name, docs in _ERROR_CATALOG.items() if docs}
_CONNECTION_NEEDLES = ("could not connect", "connect call failed", "connection refused", "errno 111",
                       "name or service not known", "nodename nor servname", "network is unreachable",
                       "no route to host", "connection closed", "connection reset", "timed out")


# --- networks -------------------------------------------------------------------------------------------

def resolve_network(network: str) -> str:
    """The websocket endpoint for `finney`, `test`, `local` or a ws:// / wss:// address.

    Names go through the SDK's own map (`bittensor.settings.NETWORKS`), so they follow the SDK; note that
    the SDK lets BT_CHAIN_ENDPOINT override `local` (default ws://127.0.0.1:9944).
    """
    text = (network or "").strip()
    if text.lower() in NETWORK_NAMES:
        return bt_settings.NETWORKS[text.lower()]
    parts = urlsplit(text)
    if parts.scheme in ("ws", "wss") and parts.hostname:
        return text
    raise ChainError(f"unknown network {network!r}: use finney, test, local, "
                     f"or a ws:// / wss:// address such as ws://127.0.0.1:9944")


# --- the commitment -------------------------------------------------------------------------------------

def commitment_info(data: str) -> dict:
    """The Commitments pallet's `info` argument for one UTF-8 string: `{"fields": [[{"Raw<N>": bytes}]]}`.

    The nesting is SUBNET.md's (and the classic SDK's). The chain type is `fields: BoundedVec<Data>`, a
    one-field wrapper around `Vec<Data>`; the SDK's encoder accepts the wrapper spelled out (this form) or
    left out (`[{"Raw<N>": ...}]`) and writes the same bytes. Reads come back in the flat form.
    """
    raw = data.encode("utf-8")
    if len(raw) > MAX_COMMITMENT_BYTES:
        raise ChainError(f"commitment is {len(raw)} bytes; the chain takes at most {MAX_COMMITMENT_BYTES} "
                         f"(shorten the repo id)")
    return {"fields": [[{f"Raw{len(raw)}": raw}]]}


def build_set_commitment_call(netuid: int, data: str):
    """The SDK's raw call for `Commitments.set_commitment(netuid, info)`; needs no connection."""
    return bittensor.calls.Commitments.set_commitment(netuid=int(netuid), info=commitment_info(data))


def _raw_bytes(value: Any) -> bytes | None:
    """The bytes of one Raw<N> payload, in any shape a decoder has produced for it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        if value.startswith("0x"):  # the v11 SDK's shape
            try:
                return bytes.fromhex(value[2:])
            except ValueError:
                pass
        return value.encode("utf-8")  # a decoder that already gave text
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], (list, tuple, bytes, bytearray, str)):
            return _raw_bytes(value[0])  # the classic SDK's ((b0, b1, ...),)
        if all(isinstance(b, int) and 0 <= b < 256 for b in value):
            return bytes(value)
    return None


def _raw_fields(fields: Any) -> list[bytes]:
    """The Raw<N> payloads among commitment fields, flat (`[{...}]`) or wrapped (`[[{...}]]`)."""
    found = []
    for entry in fields or []:
        if isinstance(entry, (list, tuple)):  # the BoundedVec wrapper, as the classic SDK decoded it
            found.extend(_raw_fields(entry))
        elif isinstance(entry, Mapping):
            for variant, value in entry.items():
                if str(variant).startswith("Raw"):
                    raw = _raw_bytes(value)
                    if raw is not None:
                        found.append(raw)
    return found


def _text(raw: bytes) -> str:
    """UTF-8 text, or the SDK's convention for bytes that are not: "0x" + hex."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + raw.hex()


def decode_commitment(record: Any) -> Commitment | None:
    """A `Commitment(block, data)` from what the chain or SDK returned, or None when there is none.

    Accepts the SDK's `client.read("commitment", ...)` result (`bittensor.Commitment` with block, deposit,
    data, fields), a raw `Commitments.CommitmentOf` storage record (`{"block", "deposit", "info": {"fields"}}`),
    and an already-decoded `Commitment`. A record without any Raw field (e.g. only a timelocked payload)
    holds no ModelId a validator could read, so it counts as none.
    """
    if not record:
        return None
    if isinstance(record, Commitment):
        return record
    if isinstance(record, Mapping):
        block = record.get("block")
        fields = (record.get("info") or {}).get("fields")
    else:  # the SDK's dataclass
        block = getattr(record, "block", None)
        fields = getattr(record, "fields", None)
    payloads = _raw_fields(fields)
    if not payloads:
        return None
    # Validators read one field; the SDK concatenates Raw fields. With the one field we write, both agree.
    return Commitment(block=int(block or 0), data=_text(b"".join(payloads)))


# --- errors ---------------------------------------------------------------------------------------------

def _error_name(error: Any, text: str) -> str | None:
    """The chain error's name: the SDK's `ChainError.name`, else a catalog name found in the message."""
    name = getattr(error, "name", None)
    if isinstance(name, str) and name:
        return name
    for token in re.findall(r"[A-Z][A-Za-z0-9]+", text):
        # Older runtimes had names today's catalog lacks (CommitmentSetRateLimitExceeded); rate limits
        # are recognised by their shape.
        if token in _KNOWN_ERROR_NAMES or token == "Payment" or "RateLimit" in token:
            return token
    return None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_connection_failure(error: Any, text: str) -> bool:
    if isinstance(error, (RpcConnectionError, ConnectionError, TimeoutError, OSError)):
        return True
    lowered = text.lower()
    return any(needle in lowered for needle in _CONNECTION_NEEDLES)


def describe_chain_error(error: Any, *, endpoint: str | None = None, netuid: int | None = None,
                         hotkey_ss58: str | None = None) -> str:
    """One line a miner can act on, for an exception (SDK or transport) or a failure message."""
    if isinstance(error, ChainError):  # already worded by this module
        return _one_line(str(error))
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    where = endpoint or "the chain endpoint"

    # Transport failures first: their messages are not chain errors, whatever words they contain.
    if isinstance(error, RpcPolicyError):
        return (f"{where} refused this machine's traffic ({_one_line(text, 160)}); retry later or choose "
                f"another endpoint with {NETWORK_FLAG}")
    name = None if isinstance(error, (RpcConnectionError, OSError)) else _error_name(error, text)
    if name is None and _is_connection_failure(error, text):
        lowered = text.lower()
        detail = "connection refused" if "refused" in lowered or "errno 111" in lowered else _one_line(text, 160)
        return (f"cannot reach the chain at {where} ({detail}); start the node or choose another endpoint "
                f"with {NETWORK_FLAG} (finney, test, local or ws://host:port)")

    subnet = f"subnet {netuid}" if netuid is not None else "the subnet"
    hotkey = f"hotkey {hotkey_ss58}" if hotkey_ss58 else "the hotkey"
    if name == "AccountNotAllowedCommit":
        register = "btcli subnets register" + (f" --netuid {netuid}" if netuid is not None else "")
        return f"{hotkey} is not registered on {subnet} (AccountNotAllowedCommit); register it with {register}"
    if name == "SpaceLimitExceeded":
        return (f"the chain refused the commitment: {hotkey} used up its commitment space for this epoch "
                f"(SpaceLimitExceeded); it may be retried later, once {subnet}'s next epoch starts")
    if name and "RateLimit" in name:
        return f"the chain rate-limited the call ({name}); it may be retried later"
    if name == "Payment":
        return ("the chain refused the transaction fee (Payment): the coldkey that owns the hotkey pays it; "
                "add TAO to that coldkey")
    if name:
        docs = _ERROR_DOCS.get(name)
        return _one_line(f"the chain refused the call: {name}" + (f" ({docs})" if docs else ""))
    return _one_line(f"chain call failed: {text}")


def neuron_from_record(record: Any) -> Neuron:
    """The SDK's Neuron (or its raw runtime record) -> uid, hotkey, incentive."""
    raw = getattr(record, "raw", None) or (record if isinstance(record, dict) else {})
    uid = getattr(record, "uid", None)
    hotkey = getattr(record, "hotkey", None)
    return Neuron(uid=int(uid if uid is not None else raw["uid"]),
                  hotkey=str(hotkey if hotkey is not None else raw["hotkey"]),
                  incentive=float(raw.get("incentive", 0) or 0))


# --- the wallet -----------------------------------------------------------------------------------------

def load_wallet(name: str, hotkey: str, path: str | None = None) -> bittensor.Wallet:
    """The SDK wallet `name` with hotkey `hotkey` under `path`, its hotkey readable without a prompt.

    Only the hotkey signs commitments; the coldkey is never unlocked. The coldkey must exist as a file or
    at least as its public half (coldkeypub.txt, all a mining machine needs), so a mistyped wallet name
    fails here rather than at commit time.
    """
    path = path or DEFAULT_WALLET_PATH
    wallet = bittensor.Wallet(name=name, hotkey=hotkey, path=path)
    wallet_dir = Path(path).expanduser() / name
    flags = f"--wallet {name} --wallet-path {path}"
    if not (wallet.coldkeypub_file.exists_on_device() or wallet.coldkey_file.exists_on_device()):
        raise ChainError(f"wallet {name!r} has no coldkey at {wallet_dir} (neither coldkey nor coldkeypub.txt); "
                         f"create it with btcli wallet new-coldkey {flags}, or check --wallet.name and --wallet.path")
    if not wallet.hotkey_file.exists_on_device():
        raise ChainError(f"wallet {name!r} has no hotkey {hotkey!r} at {wallet_dir / 'hotkeys' / hotkey}; "
                         f"create it with btcli wallet new-hotkey {flags} --wallet-hotkey {hotkey}")
    hotkey_keypair(wallet)  # read it now: a broken or locked hotkey file fails before any training is spent
    return wallet


def hotkey_keypair(wallet: Any):
    """The hotkey's keypair, unlocked without ever prompting.

    Hotkeys are normally stored unencrypted. An encrypted one is opened only with the password the SDK
    reads from its per-file environment variable; without it this is a ChainError, never a password prompt
    (the SDK's own `Wallet.get_hotkey()` would prompt). Error messages carry paths, never key material.
    """
    if not isinstance(wallet, bittensor.Wallet):
        # A keypair / signer as is, or a wallet-shaped object carrying one (e.g. dev keys on a localnet).
        return wallet if isinstance(wallet, bittensor.Signer) else wallet.hotkey
    keyfile = wallet.hotkey_file
    password = None
    if keyfile.is_encrypted():
        env_var = keyfile.env_var_name()
        try:
            password = resolve_key_password(None, env_var_name=env_var, allow_prompt=False)
        except KeyfileError:  # the SDK stores these passwords encoded; a plain one cannot be read
            raise ChainError(f"{env_var} does not hold a password in the SDK's encoding "
                             f"(bittensor's Keyfile.save_password_to_env writes it)") from None
        if password is None:
            raise ChainError(f"hotkey file {keyfile.path} is encrypted; set its password in {env_var} "
                             f"(hotkeys are normally stored unencrypted: btcli wallet new-hotkey does so)")
    try:
        return wallet.get_hotkey(password)
    except WrongPasswordError:
        raise ChainError(f"the password in {keyfile.env_var_name()} does not open hotkey file {keyfile.path}") from None
    except (KeyfileError, OSError, ValueError) as e:
        raise ChainError(f"cannot read hotkey file {keyfile.path} ({type(e).__name__})") from None


# --- the chain ------------------------------------------------------------------------------------------

def _quiet_abandoned_tasks(loop, context) -> None:
    """Log, at debug level, failures of tasks nobody awaits any more.

    When a deadline cancels a connect, the SDK's websocket dialer task can outlive it and fail later
    (its own handshake timeout); that failure was already reported as this module's ChainError.
    """
    log.debug("background SDK task ended: %s", context.get("exception") or context.get("message"))


class _LoopThread:
    """A private event loop on a daemon thread, started on first use.

    The SDK is async; its blocking facade (`bittensor.SyncClient`) takes no timeout, so each call here is an
    `asyncio.wait_for` on this loop, which cancels the work when the deadline passes.
    """

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coro, timeout: float):
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._loop.set_exception_handler(_quiet_abandoned_tasks)
                threading.Thread(target=self._loop.run_forever, name="bittensor-chain", daemon=True).start()
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self._loop)
        # The extra seconds only matter if the loop itself is stuck; wait_for normally fires first.
        return future.result(timeout + 5)

    def stop(self):
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None


class BittensorChain:
    """The `Chain` interface over the bittensor SDK, committing with `wallet`'s hotkey on `netuid`.

    Construction reads the hotkey file and nothing else: the connection opens on the first call, and every
    call is bounded by `timeout` (submitting by `submit_timeout`). `substrate` swaps the SDK's websocket
    backend for any `bittensor.Substrate` implementation (tests use an in-process one).
    """

    def __init__(self, network: str, netuid: int, wallet: Any, *, timeout: float = DEFAULT_TIMEOUT_S,
                 submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT_S, substrate: Any = None):
        self.endpoint = resolve_network(network)
        self.netuid = int(netuid)
        self.timeout = timeout
        self.submit_timeout = submit_timeout
        # The keypair itself is what gets passed to submit_call: the SDK passes a Signer through untouched,
        # whereas a Wallet would be re-read (and could prompt) at signing time.
        self._hotkey = hotkey_keypair(wallet) if wallet is not None else None  # None: read-only
        self.hotkey_ss58: str | None = self._hotkey.ss58_address if self._hotkey is not None else None
        self._substrate = substrate
        self._client: bittensor.Client | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._loop = _LoopThread()

    def __repr__(self) -> str:
        return f"BittensorChain(endpoint={self.endpoint!r}, netuid={self.netuid}, hotkey={self.hotkey_ss58!r})"

    # Connection ---------------------------------------------------------------------------------------

    async def _connected(self) -> bittensor.Client:
        """The SDK client, connected once (runs on the private loop, so one lock serializes callers)."""
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._client is None:
                client = bittensor.Client(self.endpoint, substrate=self._substrate)
                try:
                    await client.connect()
                except BaseException:
                    await self._close_quietly(client)
                    raise
                self._client = client
            return self._client

    @staticmethod
    async def _close_quietly(client) -> None:
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception:  # closing a half-open connection must not hide the reason it failed
            pass

    async def _drop_client(self) -> None:
        """Forget the connection after a failure, so the next call dials afresh instead of reusing it."""
        client, self._client = self._client, None
        if client is not None:
            await self._close_quietly(client)

    def _run(self, operation: Callable[[bittensor.Client], Any], timeout: float, doing: str):
        """Run `operation(client)` on the loop within `timeout`; every failure becomes a one-line ChainError."""
        async def attempt():
            try:
                return await operation(await self._connected())
            except (asyncio.CancelledError, RpcConnectionError, OSError, TimeoutError):
                await self._drop_client()  # a chain-side refusal leaves the connection good; these do not
                raise

        try:
            return self._loop.run(attempt(), timeout)
        except ChainError:
            raise
        except (TimeoutError, asyncio.TimeoutError):
            raise ChainError(f"no answer from {self.endpoint} within {timeout:g} s while {doing}; check the node, "
                             f"or choose another endpoint with {NETWORK_FLAG}") from None
        except Exception as e:
            raise ChainError(self._describe(e)) from None

    def _describe(self, error: Any) -> str:
        return describe_chain_error(error, endpoint=self.endpoint, netuid=self.netuid, hotkey_ss58=self.hotkey_ss58)

    def close(self) -> None:
        """Close the connection and stop the loop thread (optional: both die with the process)."""
        if self._loop._loop is not None:
            try:
                self._loop.run(self._drop_client(), 5)
            except Exception:
                pass
        self._loop.stop()
        self._connect_lock = None  # it belonged to the stopped loop; a later call starts a new one

    # The Chain interface ------------------------------------------------------------------------------

    def current_block(self) -> int:
        return int(self._run(lambda client: client.block(), self.timeout, "reading the block height"))

    def is_registered(self, hotkey_ss58: str) -> bool:
        uid = self._run(lambda client: client.read("uid", hotkey_ss58=hotkey_ss58, netuid=self.netuid),
                        self.timeout, f"checking registration on subnet {self.netuid}")
        return uid is not None

    def read_commitment(self, hotkey_ss58: str) -> Commitment | None:
        record = self._run(lambda client: client.read("commitment", netuid=self.netuid, hotkey_ss58=hotkey_ss58),
                           self.timeout, "reading the commitment")
        return decode_commitment(record)

    def neurons(self) -> list[Neuron]:
        """uid, hotkey and incentive of every neuron on the subnet (the SDK's one-call metagraph read)."""
        records = self._run(lambda client: client.read("neurons", netuid=self.netuid, lite=True), self.timeout,
                            f"reading the neurons of subnet {self.netuid}")
        return [neuron_from_record(record) for record in records or []]

    def set_commitment(self, data: str) -> None:
        if self._hotkey is None:
            raise ChainError("this chain client has no hotkey; pass --wallet.name and --wallet.hotkey to commit")
        call = build_set_commitment_call(self.netuid, data)  # size checked before anything touches the network
        log.info("committing %d bytes on subnet %d with hotkey %s via %s",
                 len(data.encode("utf-8")), self.netuid, self.hotkey_ss58, self.endpoint)
        result = self._run(lambda client: client.submit_call(call, self._hotkey, signer="hotkey"),
                           self.submit_timeout, "submitting the commitment (it may still land: read it back "
                                                "before committing again)")
        if not result.success:
            raise ChainError(self._describe(result.error or SdkChainError(result.message or "extrinsic failed")))
