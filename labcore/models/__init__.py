"""Models with named hook points shared by the research lines."""
