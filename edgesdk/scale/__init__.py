"""Archive-scale offline scoring: `edgesdk score` and `edgesdk compare --images`.

inputs.py resolves DIR|GLOB|LIST to paths; shards.py owns the output folder (Parquet part files, one
per shard, and the run record that makes a run resumable); score.py scores one shard with one
detector; pool.py (a process pool, the default) and ray_data.py (Ray Data, with --ray) run it over
the pending shards; run.py ties them together; compare.py compares two bundles' runs."""
