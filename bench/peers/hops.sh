# Sourced by profile.sh and peers.sh: the agent's Raft hop histogram
# (proglog_raft_hop_duration_seconds, reported by the leader for each entry it
# proposes), scraped before and after a run, and the mean time per entry in
# each hop between the two scrapes.

hops_scrape() { # metrics host:port, file: the histogram's sums and counts, now
  curl -sf "http://$1/metrics" | grep '^proglog_raft_hop_duration_seconds_\(sum\|count\)' > "$2"
}

hops_report() { # before file, after file; prints nothing when no entry was proposed
  awk '{ split($1, a, "\""); kind = ($1 ~ /_sum/) ? "sum" : "count"
         if (FILENAME == ARGV[1]) before[a[2] kind] = $2; else after[a[2] kind] = $2 }
       END { n = split("submit write sync commit apply_handoff apply answer", order, " "); total = 0
             for (i = 1; i <= n; i++) { h = order[i]; c = after[h "count"] - before[h "count"]
               if (c > 0) { us = (after[h "sum"] - before[h "sum"]) * 1e6 / c; total += us
                 printf "  %-14s %8.1f us  (%d entries)\n", h, us, c } }
             if (total > 0) printf "  %-14s %8.1f us\n", "all hops", total }' "$1" "$2"
}
