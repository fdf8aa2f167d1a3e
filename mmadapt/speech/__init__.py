"""Speech modality: audio loading (``audio``); strategies, data and the modality class come next."""
