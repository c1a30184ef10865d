"""The issuer: device keys (behind one seam) and capability tokens."""
