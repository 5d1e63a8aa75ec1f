"""The trusted store: every file the pack writes and reads back goes through here.

What the pack keeps in ComfyUI's folders (dataset versions, character profiles, training jobs and
their status, reports) can be replaced by anyone who can reach the server (``/upload/image``
writes any bytes into ``output/``). So a read-back:

* is bounded in size and nesting depth and parsed against a schema (unknown or ill-typed
  fields refused): :mod:`.schema`;
* must carry the pack's signature, an HMAC with a per-server secret: :mod:`.keys`;
* may only name files inside its own folder, checked with realpath: :mod:`.confine`;

and writes are atomic, versions concurrency-safe: :mod:`.files`. Text from widgets is checked up
front and shown safely in messages: :mod:`.text`. Every refusal is a :class:`StoreError` (a
:class:`~continuity.errors.ContinuityError`) naming the input; the nodes add the node's name.
"""
from .confine import checked_file, inside, list_files, read_bytes, resolve, sha256_file
from .files import (
                    existing_versions,
                    new_version_folder,
                    read_json,
                    read_json_file,
                    version_path,
                    write_json,
                    write_json_exclusive,
)
from .keys import configure, sign, verify
from .schema import (
                    Bool,
                    Either,
                    Field,
                    Float,
                    Int,
                    JsonValue,
                    List,
                    Map,
                    Obj,
                    Opt,
                    RelPath,
                    Schema,
                    StoreError,
                    Str,
                    check,
                    depth_ok,
                    load_json,
                    parse_json,
)
from .text import check_line, check_text, printable, shown, text_problem

__all__ = [
                    "Bool",
                    "Either",
                    "Field",
                    "Float",
                    "Int",
                    "JsonValue",
                    "List",
                    "Map",
                    "Obj",
                    "Opt",
                    "RelPath",
                    "Schema",
                    "StoreError",
                    "Str",
                    "check",
                    "check_line",
                    "check_text",
                    "depth_ok",
                    "checked_file",
                    "configure",
                    "existing_versions",
                    "inside",
                    "list_files",
                    "load_json",
                    "new_version_folder",
                    "parse_json",
                    "printable",
                    "read_bytes",
                    "read_json",
                    "read_json_file",
                    "resolve",
                    "sha256_file",
                    "shown",
                    "sign",
                    "text_problem",
                    "verify",
                    "version_path",
                    "write_json",
                    "write_json_exclusive",
]
