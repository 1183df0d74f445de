"""evaluate modules shipped with wukong-hf (one folder each); installed as wukong_hf.metric_modules."""
