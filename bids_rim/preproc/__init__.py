"""Pure functions on images: bias correction, masks, registration, lesions, patches."""
