"""The modalities: text, image, speech; each a folder with the same file names, registered in mmadapt.protocols."""
