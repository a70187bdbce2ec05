"""Camera geometry: quaternions, camera vectors, rays, trajectories and image crops (spec §7)."""
