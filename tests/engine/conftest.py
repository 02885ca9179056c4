"""Fixtures shared by the engine tests."""

import pytest

from gdlab.engine.steppers.compiled import StepFunctions


@pytest.fixture
def uncompiled_blocks(monkeypatch):
    """Run the compiled stepper's block logic with the block function itself instead of its
    compiled form: the same code path, without paying for torch.compile in every test."""

    def compile_stub(self):
        self.compiled_block = self.steps

    monkeypatch.setattr(StepFunctions, "compile", compile_stub)
