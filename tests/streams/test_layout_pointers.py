"""Pointer files (projections' live/building/previous, the anchor's CURRENT) name a directory
beside them. One that names a path elsewhere, as a foreign snapshot's manifest could carry, is
never followed: not served, written to, or removed by a later reproject or prune."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from ledgerlog.engine.errors import CorruptStoreError
from ledgerlog.streams import layout
from ledgerlog.streams.anchor import CURRENT, Anchor


@pytest.mark.parametrize("target", ["/srv/prod", "..", "../other-node", "a/../../x", "", "."])
def test_a_pointer_naming_a_path_elsewhere_is_not_followed(tmp_path, target):
    projections = tmp_path / "projections"
    outside = tmp_path / "prod"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    name = projections / "balances"
    name.mkdir(parents=True)
    for which in ("live", "building", "previous"):
        (name / which).write_text(json.dumps({"dir": target if target != "/srv/prod" else str(outside),
                                              "version": 2}))
        assert layout.read_pointer(str(projections), "balances", which) is None
        layout.clear_pointer(str(projections), "balances", which, remove_dir=True)
    assert (outside / "keep").read_text() == "precious"
    module = SimpleNamespace(NAME="balances", VERSION=2)
    path, version = layout.live_path(str(projections), module)
    assert path == os.path.join(str(projections), "balances", "v2") and version == 2


def test_an_anchor_pointer_naming_a_path_elsewhere_is_damage(tmp_path):
    root = tmp_path / "anchor"
    root.mkdir()
    (root / CURRENT).write_text(json.dumps({"dir": "../../etc"}))
    with pytest.raises(CorruptStoreError, match="not an anchor directory"):
        Anchor.load(str(root))
