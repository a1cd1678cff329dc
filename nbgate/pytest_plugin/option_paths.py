"""``--nbgate-reports /tmp/x`` (the space form) with an existing path, as pytest's own options.

pytest finds its rootdir and configuration file (``pyproject.toml``, with ``testpaths`` and
``addopts``) from the free command-line arguments *before* it loads ``pytest11`` plugins
(``Config.parse``: ``parse_known_args`` then ``determine_setup``, and only then
``load_setuptools_entrypoints("pytest11")``). At that moment ``--nbgate-reports`` is unknown,
so in ``--nbgate-reports /tmp/x`` the value is taken for a test path: the rootdir becomes
``/tmp/x``, the project's ``pyproject.toml`` is never read, and the wrong tests are collected
(pytest issue #8846; its own ``--junitxml /tmp/x`` works because it is known from the start).

pytest parses the command line again once the plugins are loaded, and then knows the value
belongs to the option. ``pytest_load_initial_conftests`` is the first hook that sees that
second parse, and it runs before anything used the rootdir or the configuration (conftests,
``testpaths``, collection). When an nbgate option was given in the space form and the
second parse places the rootdir or configuration file elsewhere, the setup is determined
again from the real test paths, as pytest would have done had it known the option.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pytest
from _pytest.config.findpaths import determine_setup


def value_options(parser: pytest.Parser, prefix: str = "--nbgate-") -> set[str]:
    """The option strings starting with ``prefix`` that take a value (``--nbgate-reports``)."""
    names: set[str] = set()
    for option in (o for group in parser._groups for o in group.options):
        if option.attrs().get("action", "store") in ("store", "append"):
            names.update(n for n in option.names() if n.startswith(prefix))
    return names


def spaced(args: Iterable[str], options: set[str]) -> bool:
    """Whether one of ``options`` is followed by its value as the next argument."""
    return any(arg in options for arg in args)


def redetermine_setup(config: pytest.Config, args: list[str]) -> None:
    """Find the rootdir and configuration file again from the free arguments pytest knows now
    (``args`` is pytest's own list, parsed once more after this hook); nothing changes when
    they lead to the same place."""
    namespace = config.known_args_namespace
    rootpath, inipath, inicfg, ignored = determine_setup(
        inifile=namespace.inifilename,
        override_ini=namespace.override_ini,
        args=namespace.file_or_dir,
        rootdir_cmd_arg=namespace.rootdir or None,
        invocation_dir=config.invocation_params.dir,
    )
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return
    # The wrong configuration's addopts were put in front of the arguments: swap them for the
    # right one's, as Config.parse does.
    old_addopts = list(config.getini("addopts"))
    if old_addopts and args[:len(old_addopts)] == old_addopts:
        del args[:len(old_addopts)]
    _use(config, rootpath, inipath, inicfg, ignored)
    new_addopts = list(config.getini("addopts"))
    if new_addopts:
        args[:0] = config._validate_args(new_addopts, "via addopts config")
        config.pluginmanager.consider_preparse(new_addopts, exclude_only=False)
    config.known_args_namespace = namespace = config._parser.parse_known_args(
        args, namespace=copy.copy(config.option))
    if namespace.confcutdir is None:  # Config.parse's default, from the right place now
        namespace.confcutdir = str(inipath.parent if inipath is not None else rootpath)
    config._checkversion()
    config._configure_python_path()


def _use(config: pytest.Config, rootpath: Any, inipath: Any, inicfg: Any, ignored: Any) -> None:
    config._rootpath = rootpath
    config._inipath = inipath
    config._inicfg = inicfg
    config._ignored_config_files = ignored
    config._inicache.clear()
    config._parser.extra_info["rootdir"] = str(rootpath)
    config._parser.extra_info["inifile"] = str(inipath)
