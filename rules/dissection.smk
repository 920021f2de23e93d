# Study stage 'dissection': see its issue. Rules arrive with the study; until then this file defines none.
