"""mergehub's plugin test kit, run on this distribution as installed (see mergehub.testkit.contract)."""

from __future__ import annotations

from mergehub.testing import check_architecture_distribution


def test_the_installed_distribution_keeps_the_plugin_contract() -> None:
    check_architecture_distribution("mergehub-arch-llama")
