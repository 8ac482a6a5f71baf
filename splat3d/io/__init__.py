"""The floor every layer stands on: files that survive crashes and full disks, folder locks, pictures and videos."""
