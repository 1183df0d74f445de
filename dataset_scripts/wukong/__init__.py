"""Dataset card template of the Wukong dataset repository (packaged as wukong_hf.dataset_card_templates)."""
