"""The method contract: declared abilities are checked when a class is created."""

import pytest

from reprlearn.methods import METHODS, EmbedsText, HasDensity, Method, ModelsText, Reconstructs, Samples, abilities


def test_a_method_declaring_an_ability_without_its_parts_fails_when_defined():
    with pytest.raises(TypeError, match="Broken declares Samples but does not define sample"):
        class Broken(Method, Samples):  # noqa: F841
            pass
    with pytest.raises(TypeError, match="reconstruct, figure_rows, anomaly_score"):
        class AlsoBroken(Method, Reconstructs):  # noqa: F841
            pass

    class Fine(Method, Samples):
        def sample(self, n, labels=None, generator=None):
            return None

    assert abilities(Fine) == [Samples]


def test_registered_methods_declare_what_evaluation_uses():
    assert EmbedsText in abilities(METHODS.get("clip")) and EmbedsText in abilities(METHODS.get("siglip"))
    assert Reconstructs in abilities(METHODS.get("ae")) and Reconstructs in abilities(METHODS.get("mae"))
    assert not abilities(METHODS.get("simclr"))
    assert abilities(METHODS.get("mlm")) == [ModelsText] and METHODS.get("mlm").trains_on_text
    for name in METHODS.names():  # every declared ability is complete on the registered class
        cls = METHODS.get(name)
        for ability in abilities(cls):
            assert all(getattr(cls, part, None) is not None for part in ability.requires), (name, ability)
    for name in ("vae", "cvae", "hvae"):
        assert {Samples, HasDensity, Reconstructs} <= set(abilities(METHODS.get(name)))
