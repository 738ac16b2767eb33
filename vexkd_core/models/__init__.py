"""VeXKD networks in plain PyTorch: encoders, fusion (MGFM), BEV decoder, heads, and their
composition into one BEV model (vexkd.BEVModel), of which the teacher and the students are
configurations."""
