"""The hooks a mergehub plugin may implement.

A plugin is a module (named by an entry point of group ``mergehub``) with functions
decorated by :data:`hookimpl`. Every hook returns a list of frozen spec objects; the
core validates them when it builds the :class:`~mergehub.plugin.registry.Registry`, so a
plugin with a bad schema is reported and skipped while the others keep working.

Hooks are only ever added to: new information arrives as new optional arguments.
"""

from __future__ import annotations

from typing import Any

import pluggy

from mergehub.plugin.specs import (
    ArchitectureSpec,
    ExecutorSpec,
    IOBackendSpec,
    MethodSpec,
    MoEFormatSpec,
)

PROJECT = "mergehub"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate plugin functions with this.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mergehub_register_methods() -> list[MethodSpec]:
    """Return the merge methods this plugin provides.

    Called once when the registry is built. Each :class:`MethodSpec` names the method
    (as written in ``merge_method:``), carries its parameter JSON Schema and the dotted
    path of the function that merges one tensor. The function is imported only when a
    recipe uses the method.
    """


@hookspec
def mergehub_register_architectures() -> list[ArchitectureSpec]:
    """Return the architecture definitions this plugin provides.

    Called once when the registry is built. A definition lists a model family's tensor
    names before, inside and after the repeated layers, the ``config.json`` key that
    holds the layer count, and which tensors are vocabulary-indexed or tied. It is
    matched against a model's ``config.json`` ``architectures`` entry.
    """


@hookspec(firstresult=True)
def mergehub_derive_architecture(config: dict[str, Any], tensor_names: list[str],
                                 trust_remote_code: bool) -> ArchitectureSpec | None:
    """Derive a definition for a model no registered definition serves, or return None.

    Called while planning, once per input model whose ``config.json`` ``architectures`` entry
    no plugin's definition names. ``config`` is that ``config.json``, ``tensor_names`` the
    names in its weight files (headers only: no tensor is read), ``trust_remote_code`` the
    user's ``--trust-remote-code``. Return an :class:`ArchitectureSpec` whose definition
    follows the core's architecture schema (it is validated like a registered one), typically
    with ``layer_values`` for the per-layer config keys the file leaves out. The first plugin
    that returns one wins; when none does, the core infers a layout from tensor names.
    """


@hookspec
def mergehub_register_io_backends() -> list[IOBackendSpec]:
    """Return the weight-file readers/writers this plugin provides.

    Called once when the registry is built. The implementation class must offer
    ``detect(directory) -> int | None`` (a priority, or None when it cannot read the
    directory) and ``open(directory)`` returning a reader with ``tensor_names()``,
    ``header(name)``, ``read(name)``, ``read_rows(name, start, stop)`` and ``close()``. A backend
    that writes also offers ``writer(path, entries, metadata, done=0)``: a context manager with
    ``write(name, tensor_or_row_block)`` (tensors in ``entries`` order) and ``flush()`` (hand what
    was written to the kernel); ``done > 0`` reopens an interrupted shard and keeps its first
    ``done`` tensors, for ``--resume``.
    """


@hookspec
def mergehub_register_executors() -> list[ExecutorSpec]:
    """Return the executors this plugin provides (``mergehub merge --executor NAME``).

    Called once when the registry is built. The core's own ``local`` executor (stream tensor by
    tensor on this machine) is registered through this hook too, as a built-in plugin. The class
    that :attr:`ExecutorSpec.implementation` names is built as ``Class(options)`` with the run's
    :class:`~mergehub.run.options.RunOptions` (``options.executor_options`` holds the validated
    ``--executor-option`` values) and offers ``run(job) -> None``: compute every tensor of
    ``job.plan`` and write ``job.shards`` (the layout is fixed by the core) into ``job.directory``
    with ``job.backend``'s writer, skipping what ``--resume`` keeps (the ``job.journal.done``
    tensors in plan order and the shards in ``job.journal.shards``), recording progress with
    ``job.journal`` (``advance()`` per tensor in plan order, or ``finish_shard(file, count)`` per
    whole shard in any order) and reporting each tensor to ``job.progress``. Public helpers for
    executors live in :mod:`mergehub.executing`. The
    core does everything else: the lock, the journal file, config, tokenizer, card and index, and
    the atomic rename into place. The same seed must give the same bytes as the local executor.
    """



@hookspec
def mergehub_register_moe_formats() -> list[MoEFormatSpec]:
    """Return the mixture-of-experts output formats this plugin provides (``mergehub moe``).

    The class that :attr:`MoEFormatSpec.implementation` names is built without arguments and offers:

    - ``rejects(base, experts, shared) -> str | None``: given the ``config.json`` dicts of the base,
      the routed experts' and the shared experts' models, why this format cannot be built from
      them (None when it can). The core picks the first format that accepts (or the one the
      recipe's ``architecture`` names) and lists every rejection when none does.
    - ``config(base, experts, experts_per_token, shared) -> dict``: the output ``config.json``.
    - ``tensors(base, names, experts, shared) -> list[MoETensor]``: the output tensors in writing
      order, each made of :class:`MoEPiece` runs of rows; ``names`` are the base checkpoint's
      tensor names (so a format can keep optional tensors such as biases or a separate
      ``lm_head.weight`` only where the source has them).

    The core resolves every piece to a source tensor (headers only, before any weight is read),
    computes the routers and streams the pieces into shards.
    """
