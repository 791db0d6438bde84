"""plasticrl.buffers."""
