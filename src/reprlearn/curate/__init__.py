"""Data curation, DataComp-style (Gadre et al., 2023): score a pool of image-text pairs with an
image-text run (scoring.py), filter it by composable rules (filters.py), and compare the filtered
subsets by training the same model on each for the same number of samples seen (experiment.py).
"""
