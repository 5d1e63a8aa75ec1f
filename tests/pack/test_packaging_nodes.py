"""The pack's packaging rules that need its nodes loaded: ComfyUI in this process."""
import inspect
import os
import sys

import pytest

pytestmark = pytest.mark.comfy


def test_every_node_is_documented(comfy):
    import nodes
    ours = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Continuity") and "Test" not in k}
    assert ours
    for node_id, cls in ours.items():
        schema = cls.define_schema()
        assert schema.node_id == node_id
        assert schema.display_name and schema.display_name.endswith("(Continuity)"), node_id
        assert schema.category.startswith("Continuity"), node_id
        assert schema.description, f"{node_id} has no description"
        for inp in schema.inputs or []:
            assert getattr(inp, "tooltip", None), f"{node_id} input '{inp.id}' has no tooltip"
        for out in schema.outputs or []:
            assert getattr(out, "tooltip", None), f"{node_id} output '{out.id}' has no tooltip"
            # without a display name the frontend labels the slot with its type ("STRING", "STRING", ...)
            assert getattr(out, "display_name", None), f"{node_id} output '{out.id}' has no display name"


def test_no_loaded_node_validates_with_kwargs(comfy):
    import nodes
    from comfy_api.internal import _ComfyNodeInternal, first_real_override
    ours = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Continuity")}
    assert len(ours) > 20
    for node_id, cls in ours.items():
        fn = first_real_override(cls, "validate_inputs") if issubclass(cls, _ComfyNodeInternal) else \
            getattr(cls, "VALIDATE_INPUTS", None)
        if fn is not None:
            spec = inspect.getfullargspec(fn)
            assert spec.varkw is None, f"{node_id}.validate_inputs takes **{spec.varkw}"


def test_the_store_key_lives_where_comfyui_never_serves_it(comfy):
    """ComfyUI's system user folders ('user/__...') are refused by every HTTP route (/userdata included)."""
    import folder_paths
    common = sys.modules[comfy.pack_module.__name__ + ".nodes._common"]
    where = common._key_dir()
    assert where == os.path.join(folder_paths.get_user_directory(), "__continuity")
    assert folder_paths.get_public_user_directory(os.path.basename(where)) is None
