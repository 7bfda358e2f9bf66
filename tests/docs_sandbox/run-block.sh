# shellcheck shell=bash
# Runs one block of a page, as sandbox.sh does for each of them:
#     bash -euo pipefail run-block.sh BLOCK
# The block's lines run as the next lines typed into the reader's shell:
# with the variables exported and the working directory left by the blocks
# before it (/run/docs-sandbox/shell.env), which it leaves in turn to the
# next block. Plain shell variables do not carry over. When a command fails,
# the ERR trap names its line in BLOCK for tests/docs_commands.rs.
__docs_sandbox_block=$1
shift
# shellcheck source=/dev/null
. /run/docs-sandbox/shell.env
trap '{ export -p; printf "cd %q\n" "$PWD"; } >/run/docs-sandbox/shell.env.next' EXIT
trap 'echo "docs-sandbox: line $LINENO: $BASH_COMMAND" >&2' ERR
# shellcheck source=/dev/null
. "$__docs_sandbox_block"
