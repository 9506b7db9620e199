"""`agent-gateway`: serve, manage users, issue agent tokens, read usage (SPEC §7).

Reads the same environment as the server. Every command exits 0 on success, else non-zero
with one line on stderr. Keys are shown masked. `users` (cli/users.py) follows ops/users.py's
rules, the same as the admin API's, and says how soon running gateways apply a change.
"""

from agent_gateway.cli.commands import main

__all__ = ["main"]
