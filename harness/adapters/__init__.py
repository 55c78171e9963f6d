"""What is done with adapters after training: merging them (one into its base, several into one, with peft's
combination methods; `python -m harness.adapters.merge`) and timing them as they would be served (base,
unmerged, merged, hot-swapped; `python -m harness.adapters.serve_bench`). Both read run folders through
harness/runfolder.py."""
