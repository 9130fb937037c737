"""Admitted events with extreme values (0, 1, 2^63-1, the most negative long, long and non-ASCII
strings) go through admission and every fold: no fold raises, and two replays of the log by
different batchings give equal digests (PROTOCOL.md §7 "Integers")."""
from __future__ import annotations

import tempfile

from conftest import Keys, Lines, encode, load_signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.streams.runner import Runner

I64 = (1 << 63) - 1
#: the top of the range twice as likely: sums past 64 bits need a few of them
edge = st.sampled_from([0, 1, 2, 999, 1000, I64 - 1, I64, I64])
height = st.one_of(st.sampled_from([-(1 << 63), -1, 0, 1, 2, I64]), st.integers(-(1 << 63), I64))
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=256)
rig = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)

share = st.tuples(edge, height, rig, text, st.booleans())
provider = st.tuples(text, text, edge, edge)
reading = st.tuples(st.integers(0, 3), edge)
transfer = st.tuples(edge, st.text(max_size=2000))
payout = st.tuples(st.sampled_from([0, 1, 1000, 5 * 10**9, I64]), st.integers(0, 3))


def _lines(lines: Lines, keys: Keys, draw) -> list[list[bytes]]:
    """Batches of lines to admit in turn: a pool block, providers, readings, settlements,
    shares and payouts, transfers, another block."""
    first = [encode(lines.block())]
    providers = [(pid, meter, price) for pid, meter, _stake, price in draw["providers"]]
    regs = [encode(lines.provider(keys.faucet, pid, meter_id=meter, stake=stake, price_per_kwh=price))
            for pid, meter, stake, price in draw["providers"]]
    energy = []
    for i, milli in draw["readings"]:
        if providers:
            pid, meter, _ = providers[i % len(providers)]
            energy.append(encode(lines.reading(pid, milli, meter_id=meter)))
    for n, (i, milli) in enumerate(draw["settlements"]):
        if providers:
            pid, _, price = providers[i % len(providers)]
            amount = min(I64, milli * price // 1000)  # beyond it unsignable: BAD_AMOUNT at most
            energy.append(encode(lines.settlement(f"s{n}", pid, milli, amount)))
    pool = [encode(lines.share(keys.faucet, r, job_id=job, height=h, difficulty=d, accepted=a))
            for d, h, r, job, a in draw["shares"]]
    pool += [encode(lines.payout(f"p{n}", keys.oracle, amount, rh or 1))
             for n, (amount, rh) in enumerate(draw["payouts"])]
    nonce = lines.next_nonce(keys.faucet)
    txs = [encode(lines.tx(keys.faucet, keys.oracle, amount, memo=memo, nonce=nonce + n))
           for n, (amount, memo) in enumerate(draw["transfers"])]
    return [first, regs, energy, pool, txs, [encode(lines.block())]]


def _fold(chain, directory: str, batch: int) -> dict[str, str]:
    runner = Runner(chain.log, chain.codec, chain.genesis, directory, batch=batch)
    try:
        runner.catch_up()
        assert not runner.failures(), {n: f.message for n, f in runner.failures().items()}
        return runner.digests()
    finally:
        runner.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.fixed_dictionaries({
    "providers": st.lists(provider, max_size=3), "readings": st.lists(reading, max_size=8),
    "settlements": st.lists(reading, max_size=4), "shares": st.lists(share, max_size=8),
    "payouts": st.lists(payout, max_size=3), "transfers": st.lists(transfer, max_size=4)}),
    batch=st.integers(1, 7))
def test_extreme_values_never_make_a_fold_fail(draw, batch):
    with tempfile.TemporaryDirectory() as d:
        config = Config(data_dir=f"{d}/data", sync=False)
        genesis = dev_genesis(config.keys_dir)  # writes the keys
        genesis["allocations"][load_signer(config, "faucet").address] = I64
        init_chain(config, genesis)
        with open_chain(config) as chain:
            keys = Keys(*(load_signer(config, n) for n in ("producer", "oracle", "treasury", "faucet")))
            lines = Lines(chain, keys)
            batches = _lines(lines, keys, draw)
            for i, part in enumerate(batches):
                if i == len(batches) - 1:
                    part = [encode(lines.block())]  # on the state the others left
                chain.admitter.admit(part)
            assert _fold(chain, f"{d}/a", 20_000) == _fold(chain, f"{d}/b", batch)
