"""VeXKD networks in plain PyTorch: encoders, fusion (MGFM), BEV decoder, heads, and their
composition into the Teacher and the single-modality Student."""
