#!/usr/bin/env bash
# Installs what tests/project/test_ci_file.py drives besides the Python venv:
#   - rsync (Debian/Ubuntu package): gitlab-ci-local copies the checkout into its build folders with it;
#   - Node 22 + gitlab-ci-local, from the npm registry, under .tools/ (the machine's Node may be
#     older than the >= 22 that gitlab-ci-local 4.75 needs, so a private Node comes along);
#   - PostgreSQL's server (Debian/Ubuntu package `postgresql`): tests/project/test_postgres.py starts a
#     throwaway cluster of its own on loopback (an Optuna study shared by two training processes,
#     an MLflow server on PostgreSQL). Only the binaries are wanted: no default cluster is made,
#     and nothing is started here. A fresh machine spends ~30 s on it (47 MB of packages).
#   - Chromium and a colour emoji font (Debian packages `chromium`, `fonts-noto-color-emoji`):
#     tests/reporting/test_failure_corpus.py renders the MR comment's preview headless and
#     measures its tables against GitLab's 1000 px note column, the marks drawn as emoji.
# Idempotent: when everything is already in place it only checks and exits (well under a second).
# Meant to run as root (CI, the dev container); apt-get needs it, npm does not.
set -euo pipefail

GCL_VERSION=4.75.1
NODE_MAJOR=22

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/node_modules/.bin"

have_gcl() {
    # Reading the installed version from package.json avoids starting Node on the fast path.
    local pkg="$TOOLS/node_modules/gitlab-ci-local/package.json"
    [[ -f "$pkg" && -x "$BIN/gitlab-ci-local" && -x "$BIN/node" ]] || return 1
    grep -q "\"version\": \"$GCL_VERSION\"" "$pkg" || return 1
    # The node package's real binary is fetched by an install script; a half-finished install
    # leaves a wrapper that cannot run, so one cheap start proves it.
    [[ "$("$BIN/node" --version 2>/dev/null)" == v"$NODE_MAJOR".* ]]
}

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-tools: need root to apt-get install $*; install them, or rerun as root" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "install-tools: no apt-get here; install $* with this system's package manager" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_postgres() {
    # Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin.
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || command -v pg_ctl >/dev/null
}

missing=()
command -v rsync >/dev/null || missing+=(rsync)
if ! have_postgres; then
    # Read by postgresql-common when the package is configured: the tests make their own
    # clusters, so the package's default one (a data folder and a server on port 5432) would
    # only cost time. Not a dpkg conffile, so it never prompts on upgrades.
    mkdir -p /etc/postgresql-common/createcluster.d 2>/dev/null \
        && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/nbgate.conf \
        || true
    missing+=(postgresql)
fi
command -v chromium >/dev/null || missing+=(chromium)
[[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || missing+=(fonts-noto-color-emoji)
# npm is only needed to install gitlab-ci-local; any npm installs the private Node 22.
if ! have_gcl && ! command -v npm >/dev/null; then
    missing+=(npm)
fi
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi

if ! have_gcl; then
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error \
        "node@$NODE_MAJOR" "gitlab-ci-local@$GCL_VERSION"
    have_gcl || {
        echo "install-tools: gitlab-ci-local $GCL_VERSION with Node $NODE_MAJOR did not install under $TOOLS" >&2
        exit 1
    }
fi

have_postgres || {
    echo "install-tools: the postgresql package installed no pg_ctl (looked in /usr/lib/postgresql/*/bin and PATH)" >&2
    exit 1
}
pg_bin="$(compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" | sort -V | tail -n 1 || true)"
pg_bin="${pg_bin:-$(command -v pg_ctl)}"

echo "install-tools: rsync $(rsync --version | sed -n '1s/^rsync *version \([^ ]*\).*/\1/p'), $(chromium --version 2>/dev/null | head -n 1), node $("$BIN/node" --version), gitlab-ci-local $GCL_VERSION in $BIN, $("$pg_bin" --version)"
