# Sourced by Radical Pilot's bootstrap_0.sh (as a pre_bootstrap_0 command) in this project's
# pilots only; see parsl_rcylon/runtime/rp_adjust/, which owns every adjustment of RP.
#
# RP: before it starts the agent, bootstrap_0.sh looks up 0.pool.ntp.org with `dig` and pings the
# answer (or a hard-coded public address) "for the agent's clock sync": a DNS query and an ICMP
# packet to the internet at every pilot start, which cost seconds on a compute node with no route
# out.  Nothing in RP 1.103's agent uses the result.  Changed: for the bootstrap's own shell
# (these are shell functions, not exported), `dig` answers nothing and `ping` does nothing; both
# say so in the bootstrap's log.
dig()  { echo "rcylon: skipped 'dig $*' (no DNS lookup from this pilot)" >&2; }
ping() { echo "rcylon: skipped 'ping $*' (no traffic off the machine from this pilot)"; }
