"""VeXKD distillation: BEV-query-guided mask generators, hand-made mask baselines, and the
masked BEV feature distillation loss."""
