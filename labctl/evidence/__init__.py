"""Evidence on every failure (`labctl grade/test --evidence DIR`): what proves each failed check, kept.

A check's message says in words why it failed; the evidence shows it. Each check says what proves it
(`@check(..., proof=...)`, labctl.checks.Proof):

- "threads" (threads, blocked_in, idle_cpu, io_model): the windows of observer looks the check judged,
  drawn as a timeline of the server's threads (timeline.py: a PNG, and the looks as JSON);
- "packets" (the network checks): tcpdump in the client for the check's duration (capture.py, and
  harness/packets.py in the container), the pcap cut to its cap and read on the host into a timing table
  of its connections (pcap.py).

The rooms: keeper.py is what grading calls around each check, folder.py where the files go and their caps
(2 MiB a file, 16 MiB a grading), embed.py what the reports put of them inside themselves (pictures as
data: URLs for Gradescope and PrairieLearn, 384 KiB each and 640 KiB a report). CheckResult.evidence_files
and GradeReport.evidence_dir (labctl/results.py) point at the files.

Rules: a verdict never depends on it (a check's budget starts after its capture listens, the pictures are
drawn from the looks it judged, every trouble here is a note in `evidence_left_out`); nothing of a hidden
check is kept in a student's view; everything the server chose is escaped where it is drawn or shown.
"""
